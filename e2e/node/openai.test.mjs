// The official OpenAI Node SDK against llm_proxy in front of llm_simulator.
// e2e/clients_openai_node_test.go starts caddy and runs this file with
// `node --test`, passing the proxy's base URL in LLM_BASE_URL. The proxy runs
// with `heartbeat 20ms` under `encode zstd gzip`, the simulator with `chunks 8`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const baseURL = process.env.LLM_BASE_URL;
if (!baseURL) throw new Error('set LLM_BASE_URL to the proxy, e.g. http://127.0.0.1:8080/v1');

// tapFetch keeps a copy of the last response body the SDK read, so a test
// can see the bytes on the wire (heartbeats) next to what the SDK made of them.
let lastRaw = { text: '' };
async function tapFetch(url, init) {
	const resp = await fetch(url, init);
	if (!resp.body) return resp;
	const [forSDK, forTap] = resp.body.tee();
	const raw = (lastRaw = { text: '' });
	(async () => {
		const decoder = new TextDecoder();
		for await (const chunk of forTap) raw.text += decoder.decode(chunk, { stream: true });
	})().catch(() => {}); // a broken body breaks both branches; the SDK reports it
	return new Response(forSDK, { status: resp.status, statusText: resp.statusText, headers: resp.headers });
}

const client = new OpenAI({
	baseURL,
	apiKey: 'client-key-never-forwarded',
	maxRetries: 0,
	timeout: 20_000,
	fetch: tapFetch,
});

const messages = [{ role: 'user', content: 'hello streaming world' }];
// The simulator echoes the prompt, then filler words, one per chunk.
const WANT = 'Echo: hello streaming world This is naïve 流式 ';

async function collect(stream) {
	const chunks = [];
	let text = '';
	for await (const chunk of stream) {
		chunks.push(chunk);
		text += chunk.choices[0]?.delta?.content ?? '';
	}
	return { chunks, text };
}

test('streaming', async () => {
	const { chunks, text } = await collect(
		await client.chat.completions.create({ model: 'gpt-4o-mini', messages, stream: true }),
	);
	assert.equal(text, WANT);
	assert.ok(chunks.length >= 8, `${chunks.length} chunks: the reply was not streamed`);
	assert.equal(chunks.findLast((c) => c.choices.length)?.choices[0].finish_reason, 'stop');
	assert.ok(!chunks.some((c) => c.usage), 'usage relayed without include_usage');
});

test('streaming with the stream helper', async () => {
	const stream = client.chat.completions.stream({ model: 'gpt-4o-mini', messages });
	const deltas = [];
	stream.on('content', (delta) => deltas.push(delta));
	const final = await stream.finalChatCompletion();
	assert.equal(final.choices[0].message.content, WANT);
	assert.equal(deltas.join(''), WANT);
	assert.ok(deltas.length >= 8);
});

test('non-streaming', async () => {
	const comp = await client.chat.completions.create({ model: 'gpt-4o-mini', messages });
	assert.equal(comp.choices[0].message.content, WANT);
	assert.equal(comp.choices[0].finish_reason, 'stop');
	assert.equal(comp.usage.completion_tokens, 8);
	assert.equal(comp.model, 'gpt-4o-mini');
});

test('usage with stream_options.include_usage', async () => {
	const { chunks, text } = await collect(
		await client.chat.completions.create({
			model: 'gpt-4o-mini', messages, stream: true, stream_options: { include_usage: true },
		}),
	);
	assert.equal(text, WANT);
	const last = chunks.at(-1);
	assert.deepEqual(last.choices, []);
	assert.deepEqual(
		{ prompt: last.usage.prompt_tokens, completion: last.usage.completion_tokens, total: last.usage.total_tokens },
		{ prompt: 3, completion: 8, total: 11 },
	);
});

test('tool calls assembled from deltas', async () => {
	const stream = client.chat.completions.stream({
		model: 'sim-tools',
		messages: [{ role: 'user', content: 'weather in Paris?' }],
		tools: [{
			type: 'function',
			function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } },
		}],
	});
	let pieces = 0;
	const done = [];
	stream.on('chunk', (chunk) => { if (chunk.choices[0]?.delta?.tool_calls) pieces++; });
	stream.on('tool_calls.function.arguments.done', (e) => done.push(e));
	const final = await stream.finalChatCompletion();
	assert.ok(pieces >= 3, `the tool call came in ${pieces} deltas, want it in pieces`);
	const call = final.choices[0].message.tool_calls?.[0];
	assert.equal(call?.id, 'call_sim_1');
	assert.equal(call?.function.name, 'get_weather');
	assert.deepEqual(JSON.parse(call.function.arguments), { city: 'Paris' });
	assert.equal(final.choices[0].finish_reason, 'tool_calls');
	assert.deepEqual(done.map((e) => [e.name, e.arguments]), [['get_weather', '{"city":"Paris"}']]);
});

test('reasoning_content passed through', async () => {
	const { chunks, text } = await collect(
		await client.chat.completions.create({ model: 'sim-reasoning', messages, stream: true }),
	);
	const reasoning = chunks.map((c) => c.choices[0]?.delta?.reasoning_content ?? '').join('');
	assert.equal(reasoning, 'Simulated reasoning: echo the prompt. ');
	assert.equal(text, WANT);
});

// A stream that breaks after its first chunks must end in an error, never
// look like a complete (shorter) reply. Uncompressed, the SDK reads the
// proxy's error event and throws an APIError with its message. Gzipped (the
// proxy runs under `encode zstd gzip`), Node's fetch now and then fails the
// body ("terminated") before its decoder hands over the last bytes, the
// error event among them; that is still an error, not a clean end.
for (const model of ['sim-error-event', 'sim-reset']) {
	for (const encoding of ['identity', 'default']) {
		test(`a broken upstream (${model}, accept-encoding ${encoding}) is an error, not a clean end`, async (t) => {
			const stream = await client.chat.completions.create(
				{ model, messages, stream: true },
				encoding === 'identity' ? { headers: { 'accept-encoding': 'identity' } } : {},
			);
			let text = '';
			await assert.rejects(
				(async () => {
					for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
				})(),
				(err) => {
					t.diagnostic(`${err?.constructor?.name}: ${err?.message}`);
					assert.ok(err instanceof Error);
					if (encoding === 'identity') {
						assert.ok(err instanceof OpenAI.APIError, `${err?.constructor?.name}: ${err}`);
						assert.match(err.message, model === 'sim-error-event' ? /simulated upstream error/ : /./);
					}
					return true;
				},
			);
			if (encoding === 'identity') assert.equal(text, 'Echo: hello streaming ');
			else assert.ok('Echo: hello streaming '.startsWith(text), `text before the failure: ${text}`);
		});
	}
}

test('heartbeats are ignored', async () => {
	const { chunks, text } = await collect(
		await client.chat.completions.create({ model: 'sim-slow-100', messages, stream: true }),
	);
	const beats = lastRaw.text.split(': keepalive\n').length - 1;
	assert.ok(beats >= 3, `${beats} heartbeats on the wire, want several between the chunks`);
	assert.equal(text, WANT);
	assert.ok(chunks.length >= 8);
});

// Last: the proxy may rest an upstream that answered 429 for its Retry-After,
// so a later request could be refused too.
test('an upstream 429 is a RateLimitError', async () => {
	for (const stream of [true, false]) {
		await assert.rejects(
			client.chat.completions.create({ model: 'sim-error-429', messages, stream }),
			(err) => {
				assert.ok(err instanceof OpenAI.RateLimitError, `${err?.constructor?.name}: ${err}`);
				assert.equal(err.status, 429);
				assert.match(err.headers.get('retry-after') ?? '', /^[1-9]\d*$/);
				assert.match(err.message, /429/);
				return true;
			},
		);
	}
});
