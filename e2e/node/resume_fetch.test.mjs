// Resuming by hand with plain fetch, as an app without an SSE library
// would: read part of an ndjson or text stream from llm_proxy's /chat (with
// `resume`, in front of llm_simulator), abort, and ask again with
// `Last-Event-ID: <X-Stream-ID>.<n>`, n counting the lines (ndjson) or the
// bytes (text) it has. What it assembles must be the whole reply exactly.
// e2e/resume_clients_test.go starts caddy and runs this file with
// `node --test`, passing the proxy's base URL in LLM_BASE_URL.
import { test } from 'node:test';
import assert from 'node:assert/strict';

const baseURL = process.env.LLM_BASE_URL;
if (!baseURL) throw new Error('set LLM_BASE_URL to the proxy, e.g. http://127.0.0.1:8080/v1');
const chat = `${new URL(baseURL).origin}/chat?prompt=${encodeURIComponent('hello streaming world')}`;
// The simulator echoes the prompt, then filler words, one per chunk.
const WANT = 'Echo: hello streaming world This is naïve 流式 ';

// lines reads a body's ndjson lines, skipping heartbeats' empty lines.
async function* lines(body) {
	const decoder = new TextDecoder();
	let buf = '';
	for await (const chunk of body) {
		buf += decoder.decode(chunk, { stream: true });
		let nl;
		while ((nl = buf.indexOf('\n')) >= 0) {
			const line = buf.slice(0, nl);
			buf = buf.slice(nl + 1);
			if (line !== '') yield JSON.parse(line);
		}
	}
	assert.equal(buf, '', 'the body ended inside a line');
}

// A resume is the request again, GET or POST: a POST's body is ignored,
// another prompt too, and the stream's own rest comes back.
const resumes = {
	GET: (id, n) => fetch(`${chat}&format=ndjson`, { headers: { 'Last-Event-ID': `${id}.${n}` } }),
	POST: (id, n) => fetch(`${new URL(chat).origin}/chat?format=ndjson`, {
		method: 'POST',
		headers: { 'Last-Event-ID': `${id}.${n}`, 'Content-Type': 'application/json' },
		body: JSON.stringify({ messages: [{ role: 'user', content: 'something else entirely' }] }),
	}),
};

for (const [method, resume] of Object.entries(resumes)) test(`ndjson: 3 lines, abort, resume at .3 (${method}), the rest exactly once`, async () => {
	const ctl = new AbortController();
	const first = await fetch(`${chat}&format=ndjson`, { signal: ctl.signal });
	assert.equal(first.status, 200);
	const id = first.headers.get('x-stream-id');
	assert.match(id ?? '', /^[A-Za-z0-9_-]{22}$/);
	const got = [];
	for await (const line of lines(first.body)) {
		got.push(line);
		if (got.length === 3) break;
	}
	ctl.abort();
	assert.ok(!got.some((l) => l.done), 'the stream ended within 3 lines: nothing left to resume');

	const rest = await resume(id, 3);
	assert.equal(rest.status, 200);
	assert.equal(rest.headers.get('x-stream-id'), id);
	assert.match(rest.headers.get('content-type'), /^application\/x-ndjson/);
	for await (const line of lines(rest.body)) got.push(line);

	assert.equal(got.map((l) => l.content ?? '').join(''), WANT);
	assert.equal(got.filter((l) => l.done).length, 1, 'one done');
	assert.ok(got.at(-1).done, 'the done last');
	assert.ok(!got.some((l) => l.error), JSON.stringify(got));

	// It has it all now: 204, and nothing starts again.
	const again = await resume(id, got.length);
	assert.equal(again.status, 204);
});

test('text: bytes up to the middle of a character, abort, resume by bytes', async () => {
	const want = new TextEncoder().encode(WANT);
	const ctl = new AbortController();
	const first = await fetch(`${chat}&format=text`, { signal: ctl.signal });
	assert.equal(first.status, 200);
	const id = first.headers.get('x-stream-id');
	assert.match(id ?? '', /^[A-Za-z0-9_-]{22}$/);
	// Read until the bytes hold the first of 流's three, and keep up to it:
	// a client may have any prefix of the body, not only whole characters.
	const cut = want.indexOf(0xe6) + 1; // 流 is e6 b5 81
	assert.ok(cut > 0);
	let have = new Uint8Array();
	for await (const chunk of first.body) {
		have = concat(have, chunk);
		if (have.length >= cut) break;
	}
	ctl.abort();
	have = have.slice(0, cut);

	const rest = await fetch(`${chat}&format=text`, { headers: { 'Last-Event-ID': `${id}.${have.length}` } });
	assert.equal(rest.status, 200);
	assert.match(rest.headers.get('content-type'), /^text\/plain/);
	const all = concat(have, new Uint8Array(await rest.arrayBuffer()));
	assert.equal(new TextDecoder('utf-8', { fatal: true }).decode(all), WANT);

	const again = await fetch(`${chat}&format=text`, { headers: { 'Last-Event-ID': `${id}.${all.length}` } });
	assert.equal(again.status, 204);
});

function concat(a, b) {
	const out = new Uint8Array(a.length + b.length);
	out.set(a);
	out.set(b, a.length);
	return out;
}
