// The Responses API through llm_proxy in front of llm_simulator, driven by
// the clients that speak it: the official OpenAI Node SDK, the Vercel AI
// SDK's default openai(model), LangChain JS's ChatOpenAI with
// useResponsesApi, and Node's own WebSocket client. e2e/clients_responses_test.go
// starts caddy and runs this file with `node --test`, passing the proxy's
// base URL in LLM_BASE_URL. The proxy serves /v1/* with `heartbeat 20ms`
// under `encode zstd gzip`, the simulator runs with `chunks 8`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { streamText, tool, jsonSchema } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { ChatOpenAI } from '@langchain/openai';

const baseURL = process.env.LLM_BASE_URL;
if (!baseURL) throw new Error('set LLM_BASE_URL to the proxy, e.g. http://127.0.0.1:8080/v1');

const client = new OpenAI({ baseURL, apiKey: 'client-key-never-forwarded', maxRetries: 0, timeout: 20_000 });
const input = 'hello streaming world';
// The simulator echoes the prompt, then filler words, one per delta.
const WANT = 'Echo: hello streaming world This is naïve 流式 ';
const USAGE = { input_tokens: 3, output_tokens: 8, total_tokens: 11 };
const weather = {
	type: 'object',
	properties: { city: { type: 'string' } },
	required: ['city'],
	additionalProperties: false,
};

async function events(stream) {
	const evs = [];
	for await (const ev of stream) evs.push(ev);
	return evs;
}

const usageOf = (u) => ({ input_tokens: u.input_tokens, output_tokens: u.output_tokens, total_tokens: u.total_tokens });

test('OpenAI SDK: responses.create({stream: true}) gets every event, in order', async () => {
	const evs = await events(await client.responses.create({ model: 'gpt-4o-mini', input, stream: true }));
	assert.equal(evs[0].type, 'response.created');
	assert.equal(evs[1].type, 'response.in_progress');
	assert.equal(evs[2].type, 'response.output_item.added');
	assert.equal(evs.at(-1).type, 'response.completed');
	assert.deepEqual(evs.map((e) => e.sequence_number), evs.map((_, i) => i), 'sequence numbers dropped or reordered');
	const text = evs.filter((e) => e.type === 'response.output_text.delta').map((e) => e.delta).join('');
	assert.equal(text, WANT);
	assert.deepEqual(usageOf(evs.at(-1).response.usage), USAGE);
	assert.equal(evs.at(-1).response.output_text ?? evs.at(-1).response.output[0].content[0].text, WANT);
});

test('OpenAI SDK: the responses.stream helper and its final response', async () => {
	const stream = client.responses.stream({ model: 'gpt-4o-mini', input });
	const deltas = [];
	stream.on('response.output_text.delta', (e) => deltas.push(e.delta));
	const final = await stream.finalResponse();
	assert.equal(final.output_text, WANT);
	assert.equal(deltas.join(''), WANT);
	assert.ok(deltas.length >= 8, `${deltas.length} deltas: not streamed`);
	assert.equal(final.status, 'completed');
	assert.deepEqual(usageOf(final.usage), USAGE);
});

test('OpenAI SDK: a Responses tool call', async () => {
	const stream = client.responses.stream({
		model: 'sim-tools',
		input: 'weather in Paris?',
		tools: [{ type: 'function', name: 'get_weather', parameters: weather, strict: true }],
	});
	let pieces = 0;
	stream.on('response.function_call_arguments.delta', () => pieces++);
	const final = await stream.finalResponse();
	assert.ok(pieces >= 3, `the arguments came in ${pieces} deltas, want them in pieces`);
	const call = final.output.find((o) => o.type === 'function_call');
	assert.equal(call?.name, 'get_weather');
	assert.equal(call?.call_id, 'call_sim_1');
	assert.deepEqual(JSON.parse(call.arguments), { city: 'Paris' });
});

test("OpenAI SDK: the upstream's response.failed arrives as it was sent", async () => {
	const evs = await events(await client.responses.create({ model: 'sim-error-event', input, stream: true }));
	const last = evs.at(-1);
	assert.equal(last.type, 'response.failed');
	assert.equal(last.response.error.message, 'simulated upstream error');
	assert.equal(last.sequence_number, evs.length - 1);
	assert.ok(!evs.some((e) => e.type === 'response.completed'));
});

test("OpenAI SDK: a broken upstream ends in the proxy's error event, not a clean end", async () => {
	const evs = await events(await client.responses.create({ model: 'sim-reset', input, stream: true },
		{ headers: { 'accept-encoding': 'identity' } }));
	const last = evs.at(-1);
	assert.equal(last.type, 'error');
	assert.equal(last.message, 'upstream stream ended abnormally');
	assert.equal(last.sequence_number, evs.length - 1);
	assert.ok(!evs.some((e) => e.type === 'response.completed'));
});

const ai = createOpenAI({ baseURL, apiKey: 'client-key-never-forwarded' });

test('Vercel AI SDK: openai(model), the Responses API, streams text and usage', async () => {
	const result = streamText({ model: ai('gpt-4o-mini'), prompt: input, maxRetries: 0 });
	let chunks = 0;
	let text = '';
	for await (const delta of result.textStream) {
		chunks++;
		text += delta;
	}
	assert.equal(text, WANT);
	assert.ok(chunks >= 8, `${chunks} chunks: not streamed`);
	const usage = await result.usage;
	assert.deepEqual(
		{ input: usage.inputTokens, output: usage.outputTokens, total: usage.totalTokens },
		{ input: 3, output: 8, total: 11 },
	);
	assert.equal((await result.finishReason), 'stop');
});

test('Vercel AI SDK: openai(model) calls a tool', async () => {
	const result = streamText({
		model: ai('sim-tools'),
		prompt: 'weather in Paris?',
		maxRetries: 0,
		tools: { get_weather: tool({ description: 'the weather in a city', inputSchema: jsonSchema(weather) }) },
	});
	const calls = await result.toolCalls;
	assert.equal(calls.length, 1);
	assert.equal(calls[0].toolName, 'get_weather');
	assert.equal(calls[0].toolCallId, 'call_sim_1');
	assert.deepEqual(calls[0].input, { city: 'Paris' });
	assert.equal(await result.finishReason, 'tool-calls');
});

test("Vercel AI SDK: a mid-stream error surfaces as the upstream's message", async () => {
	const errors = [];
	const result = streamText({
		model: ai('sim-error-event'),
		prompt: input,
		maxRetries: 0,
		onError: ({ error }) => errors.push(error),
	});
	let text = '';
	for await (const part of result.fullStream) {
		if (part.type === 'text-delta') text += part.text;
		if (part.type === 'error') errors.push(part.error);
	}
	assert.ok(text.length > 0, 'no text before the error');
	assert.ok(errors.length > 0, 'the failure did not surface');
	const messages = errors.map((e) => e?.message ?? JSON.stringify(e));
	assert.ok(messages.some((m) => /simulated upstream error/.test(m)), `errors: ${messages.join(' | ')}`);
	assert.doesNotMatch(messages.join(' '), /terminated|Failed to process successful response/);
});

const langchain = (model) =>
	new ChatOpenAI({ model, useResponsesApi: true, apiKey: 'client-key-never-forwarded', maxRetries: 0,
		configuration: { baseURL } });

test('LangChain JS: ChatOpenAI with useResponsesApi streams text and usage', async () => {
	let full;
	let chunks = 0;
	for await (const chunk of await langchain('gpt-4o-mini').stream(input)) {
		chunks++;
		full = full ? full.concat(chunk) : chunk;
	}
	assert.equal(full.text, WANT);
	assert.ok(chunks >= 8, `${chunks} chunks: not streamed`);
	assert.deepEqual(
		{ input: full.usage_metadata?.input_tokens, output: full.usage_metadata?.output_tokens, total: full.usage_metadata?.total_tokens },
		{ input: 3, output: 8, total: 11 },
	);
});

test('LangChain JS: ChatOpenAI with useResponsesApi calls a tool', async () => {
	const llm = langchain('sim-tools').bindTools([
		{ type: 'function', function: { name: 'get_weather', description: 'the weather in a city', parameters: weather } },
	]);
	const msg = await llm.invoke('weather in Paris?');
	assert.equal(msg.tool_calls?.length, 1);
	assert.equal(msg.tool_calls[0].name, 'get_weather');
	assert.deepEqual(msg.tool_calls[0].args, { city: 'Paris' });
});

// Codex tries the Responses API over a WebSocket first. The proxy refuses
// the upgrade at once (426), and a client falls back to HTTP streaming.
test('a WebSocket client on /v1/responses is refused at once, and HTTP streaming still works', async () => {
	assert.equal(typeof WebSocket, 'function', 'run node with --experimental-websocket (Node 20) or Node 22+');
	const started = Date.now();
	const seen = await new Promise((resolve) => {
		const ws = new WebSocket(baseURL.replace(/^http/, 'ws') + '/responses');
		const seen = [];
		ws.addEventListener('open', () => seen.push('open'));
		// Node 20's client fires error on a refused handshake, and no close.
		ws.addEventListener('error', (e) => {
			seen.push(`error: ${e.message}`);
			setTimeout(() => resolve(seen), 50);
		});
		ws.addEventListener('close', () => resolve(seen));
	});
	assert.deepEqual(seen, ['error: Received network error or non-101 status code.'], 'the upgrade was not refused');
	assert.ok(Date.now() - started < 5_000, 'the refusal took long');

	const evs = await events(await client.responses.create({ model: 'gpt-4o-mini', input, stream: true }));
	assert.equal(evs.at(-1).type, 'response.completed');
});
