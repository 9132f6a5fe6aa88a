package resume

import "context"

// subscribe follows the cancel channel: a Cancel sent to any instance
// reaches the one whose upstream runs the stream at once. go-redis
// resubscribes by itself after Redis comes back; a cancel sent meanwhile is
// found in the meta hash by the producer's next Append or keepAlive.
func (r *redisStore) subscribe() {
	r.pubsub = r.c.Subscribe(context.Background(), r.cancelChannel())
	ch := r.pubsub.Channel()
	r.spawn(func() {
		for msg := range ch { // until Close closes the subscription
			if s := r.mem.lookup(msg.Payload); s != nil {
				s.cancel()
			}
		}
	})
}
