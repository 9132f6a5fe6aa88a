// Anthropic's Messages API through llm_proxy (`auth x-api-key`) in front of
// llm_simulator, driven by the official Anthropic Node SDK as Claude Code
// and apps call it. e2e/messages_test.go starts caddy and runs this file with
// `node --test`, passing the proxy's base URL in LLM_BASE_URL. The proxy
// serves /v1/* with `max_tokens 2000`, heartbeats between the events, under
// `encode zstd gzip`; the simulator runs with `chunks 8`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';

const baseURL = process.env.LLM_BASE_URL;
if (!baseURL) throw new Error('set LLM_BASE_URL to the proxy, e.g. http://127.0.0.1:8080/v1');

// The SDK appends /v1/messages itself.
const client = new Anthropic({ baseURL: baseURL.replace(/\/v1$/, ''), apiKey: 'client-key-never-forwarded', maxRetries: 0, timeout: 20_000 });
const messages = [{ role: 'user', content: 'hi claude' }];
// The simulator echoes the prompt, then filler words, one per delta.
const WANT = 'Echo: hi claude This is naïve 流式 text ';
const weather = {
	name: 'get_weather',
	description: 'The weather in a city',
	input_schema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
};

test('messages.stream: the text as it streams, and finalMessage()', async () => {
	const stream = client.messages.stream({ model: 'claude-sonnet-4-5', max_tokens: 1024, messages });
	const deltas = [];
	stream.on('text', (t) => deltas.push(t));
	const msg = await stream.finalMessage();
	assert.equal(msg.role, 'assistant');
	assert.equal(msg.content.length, 1);
	assert.equal(msg.content[0].type, 'text');
	assert.equal(msg.content[0].text, WANT);
	assert.equal(deltas.join(''), WANT);
	assert.ok(deltas.length >= 8, `${deltas.length} deltas: not streamed`);
	assert.equal(msg.stop_reason, 'end_turn');
	assert.ok(msg.usage.input_tokens > 0 && msg.usage.output_tokens === 8, JSON.stringify(msg.usage));
	assert.match(msg.id, /^msg_/);
});

test('messages.stream with a tool: the tool_use block with its parsed input', async () => {
	const stream = client.messages.stream({ model: 'sim-tools', max_tokens: 1024, messages, tools: [weather] });
	const pieces = [];
	stream.on('inputJson', (partial) => pieces.push(partial));
	const msg = await stream.finalMessage();
	assert.equal(msg.stop_reason, 'tool_use');
	const call = msg.content.find((b) => b.type === 'tool_use');
	assert.ok(call, JSON.stringify(msg.content));
	assert.equal(call.name, 'get_weather');
	assert.match(call.id, /^toolu_/);
	assert.deepEqual(call.input, { city: 'Paris' });
	assert.ok(pieces.length >= 2, `${pieces.length} input pieces: not streamed`);
});

test('messages.stream with thinking: the thinking block and its signature', async () => {
	const msg = await client.messages.stream({ model: 'sim-reasoning', max_tokens: 2000, messages,
		thinking: { type: 'enabled', budget_tokens: 1024 } }).finalMessage();
	assert.deepEqual(msg.content.map((b) => b.type), ['thinking', 'text']);
	assert.equal(msg.content[0].thinking, 'Simulated reasoning: echo the prompt. ');
	assert.ok(msg.content[0].signature, 'no signature');
	assert.equal(msg.content[1].text, WANT);
});

test('beta.messages.stream (messages?beta=true) and its raw events', async () => {
	const types = [];
	const stream = client.beta.messages.stream({ model: 'claude-sonnet-4-5', max_tokens: 1024, messages });
	stream.on('streamEvent', (ev) => types.push(ev.type));
	const msg = await stream.finalMessage();
	assert.equal(msg.content[0].text, WANT);
	assert.equal(types[0], 'message_start');
	assert.equal(types.at(-1), 'message_stop');
});

test('messages.create without stream: the whole Message', async () => {
	const msg = await client.messages.create({ model: 'claude-sonnet-4-5', max_tokens: 1024, messages });
	assert.equal(msg.type, 'message');
	assert.equal(msg.content[0].text, WANT);
	assert.equal(msg.usage.output_tokens, 8);
});

test('a refusal before the first byte is the SDK\'s typed error, with the message', async () => {
	await assert.rejects(client.messages.stream({ model: 'claude-sonnet-4-5', max_tokens: 100000, messages }).finalMessage(), (err) => {
		assert.ok(err instanceof Anthropic.BadRequestError, String(err));
		assert.equal(err.status, 400);
		assert.equal(err.error.type, 'error');
		assert.equal(err.error.error.type, 'invalid_request_error');
		assert.match(err.message, /max_tokens is 100000, more than this endpoint allows \(at most 2000\)/);
		return true;
	});
	await assert.rejects(client.messages.create({ model: 'sim-error-429', max_tokens: 10, messages, stream: true }), (err) => {
		assert.ok(err instanceof Anthropic.RateLimitError, String(err));
		assert.equal(err.error.error.type, 'rate_limit_error');
		assert.match(err.message, /simulated 429 Too Many Requests error/);
		assert.equal(err.headers.get('retry-after'), '1');
		return true;
	});
});

test('an error event mid-stream is the SDK\'s APIError, with the upstream\'s message', async () => {
	const stream = client.messages.stream({ model: 'sim-error-event', max_tokens: 1024, messages });
	let text = '';
	stream.on('text', (t) => { text += t; });
	await assert.rejects(stream.finalMessage(), (err) => {
		assert.ok(err instanceof Anthropic.APIError, String(err));
		assert.match(err.message, /simulated upstream error/);
		assert.equal(err.type, 'overloaded_error');
		return true;
	});
	assert.ok(text.startsWith('Echo: hi claude'), text);
});
