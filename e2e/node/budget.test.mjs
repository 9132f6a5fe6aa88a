// The official OpenAI Node SDK against llm_proxy with a token budget of 30
// tokens a minute and max_tokens 8, in front of llm_simulator (`chunks 8`).
// e2e/clients_openai_node_test.go starts caddy and runs this file with
// `node --test`, passing the proxy's base URL in LLM_BASE_URL. The tests run
// in order, each spending the budget further.
//
// Each request reserves 14 tokens (8, and 6 for its 21 characters of
// prompt) and is charged the simulator's usage: 3 of prompt and 8 of
// completion.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const baseURL = process.env.LLM_BASE_URL;
if (!baseURL) throw new Error('set LLM_BASE_URL to the proxy, e.g. http://127.0.0.1:8080/v1');

const client = new OpenAI({ baseURL, apiKey: 'client-key-never-forwarded', maxRetries: 0, timeout: 20_000 });
const messages = [{ role: 'user', content: 'hello streaming world' }];
const WANT = 'Echo: hello streaming world This is naïve 流式 ';

// tokenHeaders is what the SDK's response exposes of the budget.
const tokenHeaders = (headers) => ({
	limit: headers.get('x-ratelimit-limit-tokens'),
	remaining: headers.get('x-ratelimit-remaining-tokens'),
	reset: headers.get('x-ratelimit-reset-tokens'),
});

async function streamed() {
	const { data: stream, response } = await client.chat.completions
		.create({ model: 'gpt-4o-mini', messages, stream: true, stream_options: { include_usage: true } })
		.withResponse();
	let text = '';
	let usage;
	for await (const chunk of stream) {
		text += chunk.choices[0]?.delta?.content ?? '';
		usage = chunk.usage ?? usage;
	}
	return { text, usage, headers: tokenHeaders(response.headers) };
}

test('the token headers count down', async () => {
	const first = await streamed();
	assert.equal(first.text, WANT);
	assert.equal(first.usage.total_tokens, 11);
	assert.equal(first.headers.limit, '30');
	assert.equal(first.headers.remaining, '16'); // 30 less this request's 14
	assert.match(first.headers.reset, /^([1-5]?[0-9]s|1m0s)$/);

	const second = await streamed();
	assert.equal(second.text, WANT);
	assert.equal(second.headers.remaining, '5'); // less the first's 11, and 14
});

test('a stream that crosses the budget ends in an APIError, never a clean end', async () => {
	const stream = await client.chat.completions.create({ model: 'gpt-4o-mini', messages, stream: true });
	let text = '';
	await assert.rejects(
		(async () => {
			for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
		})(),
		(err) => {
			assert.ok(err instanceof OpenAI.APIError, `${err?.constructor?.name}: ${err}`);
			assert.match(err.message, /token budget exceeded: 30 tokens per minute; retry in \d+s/);
			assert.equal(err.type, 'rate_limit_exceeded');
			return true;
		},
	);
	// 8 tokens were left: 6 of them the prompt's.
	assert.equal(text, 'Echo: hello ');
});

test('a spent budget is a RateLimitError with the wait', async () => {
	for (const stream of [true, false]) {
		await assert.rejects(client.chat.completions.create({ model: 'gpt-4o-mini', messages, stream }), (err) => {
			assert.ok(err instanceof OpenAI.RateLimitError, `${err?.constructor?.name}: ${err}`);
			assert.equal(err.status, 429);
			assert.match(err.message, /^429 token budget exceeded: 30 tokens per minute; retry in \d+s$/);
			const retry = Number(err.headers.get('retry-after'));
			assert.ok(retry >= 1 && retry <= 60, `retry-after ${retry}`);
			assert.deepEqual(tokenHeaders(err.headers), {
				limit: '30', remaining: '0', reset: retry === 60 ? '1m0s' : `${retry}s`,
			});
			return true;
		});
	}
});
