//go:build !unix

package capture

import "time"

// cpuTime is not measured here; BenchmarkViewers reports 0.
func cpuTime() time.Duration { return 0 }
