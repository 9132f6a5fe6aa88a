// The `eventsource` package, Node's EventSource, reading a resumable stream
// (llm_proxy with `resume`) through a TCP proxy that cuts its connections
// after some bytes. It reconnects by itself with Last-Event-ID, and the
// text it assembles must be the whole reply, each event once, then one
// done; the reconnect after the done is answered 204, which stops it.
// e2e/resume_clients_test.go runs this file with `node --test`, passing:
// RESUME_URL, the stream's URL through the cutting proxy; RESUME_FRAMING,
// sse (/chat) or openai (/v1/chat/completions); RESUME_WANT, the reply.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventSource } from 'eventsource';

const url = process.env.RESUME_URL;
const framing = process.env.RESUME_FRAMING;
const want = process.env.RESUME_WANT;
if (!url || !want || !['sse', 'openai'].includes(framing)) {
	throw new Error('set RESUME_URL, RESUME_WANT and RESUME_FRAMING (sse or openai)');
}

// read follows one EventSource until the server's 204 closes it, and
// returns what it saw. eventsource 5.x has no option for its reconnect
// delay (3s, changed only by a `retry:` field the server sends), so a cut
// costs 3s.
function read(es, deadline) {
	return new Promise((resolve, reject) => {
		const seen = { ids: [], text: '', dones: 0, drops: [], serverErrors: [] };
		// eventsource unrefs its reconnect timer: this one keeps node running
		// while it waits, and bounds the test.
		const timer = setTimeout(() => {
			es.close();
			reject(new Error(`no 204 within ${deadline}ms: ${JSON.stringify(seen)}`));
		}, deadline);
		const take = (ev) => {
			seen.ids.push(ev.lastEventId);
			if (framing === 'openai' && ev.data === '[DONE]') {
				seen.dones++;
				return;
			}
			const d = JSON.parse(ev.data);
			seen.text += framing === 'sse' ? (d.content ?? '') : (d.choices?.[0]?.delta?.content ?? '');
		};
		es.addEventListener('message', take);
		es.addEventListener('done', (ev) => {
			seen.ids.push(ev.lastEventId);
			seen.dones++;
		});
		es.addEventListener('error', (ev) => {
			if (ev.data !== undefined) {
				// The server's own `event: error`, a MessageEvent.
				seen.serverErrors.push(ev.data);
				return;
			}
			seen.drops.push(`${ev.code ?? ''} ${ev.message ?? ''}`.trim());
			if (ev.code === 204) {
				clearTimeout(timer);
				assert.equal(es.readyState, EventSource.CLOSED);
				resolve(seen);
			}
		});
	});
}

test(`EventSource resumes a cut ${framing} stream by itself, each event once`, async (t) => {
	const es = new EventSource(url);
	const seen = await read(es, 60_000);
	t.diagnostic(`connection errors: ${JSON.stringify(seen.drops)}`);
	assert.deepEqual(seen.serverErrors, [], 'the server sent error events');
	assert.equal(seen.text, want);
	assert.equal(seen.dones, 1, 'one done');
	// Every event's ID is the stream's and the next number: nothing twice,
	// nothing skipped, the done last.
	const stream = seen.ids[0]?.split('.')[0];
	assert.match(stream ?? '', /^[A-Za-z0-9_-]{22}$/);
	assert.deepEqual(seen.ids, seen.ids.map((_, i) => `${stream}.${i + 1}`));
	// The cuts and the 204 after the done: a reconnect each.
	assert.ok(seen.drops.length >= 2, `${seen.drops.length} reconnects: the proxy cut nothing`);
	assert.match(seen.drops.at(-1), /^204/);
});
