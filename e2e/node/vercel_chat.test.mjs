// The Vercel AI SDK's openai.chat(model), which speaks chat completions,
// through llm_proxy in front of llm_simulator: text, usage, a tool call, and
// a mid-stream error that reaches the app as the upstream's message (the
// error event ends the body cleanly, so the SDK reads it rather than a
// broken connection). e2e/clients_openai_node_test.go starts caddy and runs
// this file with LLM_BASE_URL set.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { streamText, tool, jsonSchema } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';

const baseURL = process.env.LLM_BASE_URL;
if (!baseURL) throw new Error('set LLM_BASE_URL to the proxy, e.g. http://127.0.0.1:8080/v1');
const ai = createOpenAI({ baseURL, apiKey: 'client-key-never-forwarded' });
const prompt = 'hello streaming world';
const WANT = 'Echo: hello streaming world This is naïve 流式 ';

test('Vercel AI SDK: openai.chat(model) streams text and usage', async () => {
	const result = streamText({ model: ai.chat('gpt-4o-mini'), prompt, maxRetries: 0 });
	let text = '';
	let chunks = 0;
	for await (const delta of result.textStream) {
		chunks++;
		text += delta;
	}
	assert.equal(text, WANT);
	assert.ok(chunks >= 8, `${chunks} chunks: not streamed`);
	const usage = await result.usage;
	assert.deepEqual({ input: usage.inputTokens, output: usage.outputTokens }, { input: 3, output: 8 });
	assert.equal(await result.finishReason, 'stop');
});

test('Vercel AI SDK: openai.chat(model) calls a tool', async () => {
	const result = streamText({
		model: ai.chat('sim-tools'),
		prompt: 'weather in Paris?',
		maxRetries: 0,
		tools: {
			get_weather: tool({
				description: 'the weather in a city',
				inputSchema: jsonSchema({ type: 'object', properties: { city: { type: 'string' } }, required: ['city'] }),
			}),
		},
	});
	const calls = await result.toolCalls;
	assert.equal(calls.length, 1);
	assert.equal(calls[0].toolName, 'get_weather');
	assert.deepEqual(calls[0].input, { city: 'Paris' });
	assert.equal(await result.finishReason, 'tool-calls');
});

test("Vercel AI SDK: openai.chat(model) gets a mid-stream error as the upstream's message", async () => {
	const errors = [];
	const result = streamText({
		model: ai.chat('sim-error-event'),
		prompt,
		maxRetries: 0,
		onError: ({ error }) => errors.push(error),
	});
	let text = '';
	for await (const part of result.fullStream) {
		if (part.type === 'text-delta') text += part.text;
		if (part.type === 'error') errors.push(part.error);
	}
	assert.ok(text.length > 0, 'no text before the error');
	const messages = errors.map((e) => e?.message ?? JSON.stringify(e));
	assert.ok(messages.some((m) => /simulated upstream error/.test(m)), `errors: ${messages.join(' | ')}`);
	assert.doesNotMatch(messages.join(' '), /terminated|Failed to process successful response/);
});
