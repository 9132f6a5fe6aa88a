// The official OpenAI Node SDK on the API beside chat completions, through
// `llm_proxy /v1/*` in front of llm_simulator (`chunks 8`).
// e2e/api_test.go starts caddy and runs this file with `node --test`,
// passing the proxy's base URL in LLM_BASE_URL.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const baseURL = process.env.LLM_BASE_URL;
if (!baseURL) throw new Error('set LLM_BASE_URL to the proxy, e.g. http://127.0.0.1:8080/v1');

const client = new OpenAI({ baseURL, apiKey: 'client-key-never-forwarded', maxRetries: 0, timeout: 20_000 });

test('models.list', async () => {
	const ids = [];
	for await (const m of client.models.list()) {
		assert.equal(m.object, 'model');
		assert.equal(m.owned_by, 'llm-simulator');
		ids.push(m.id);
	}
	assert.equal(ids[0], 'llm-simulator');
	assert.ok(ids.includes('sim-tools'), ids.join(','));
	assert.equal(new Set(ids).size, ids.length, 'an id listed twice');
});

test('models.retrieve, and an unknown model in OpenAI\'s error shape', async () => {
	const m = await client.models.retrieve('sim-reasoning');
	assert.equal(m.id, 'sim-reasoning');
	await assert.rejects(client.models.retrieve('gpt-9'), (err) => {
		assert.ok(err instanceof OpenAI.NotFoundError, String(err));
		assert.equal(err.code, 'model_not_found');
		assert.match(err.message, /gpt-9/);
		return true;
	});
});

test('embeddings.create (the SDK asks for base64 and decodes it)', async () => {
	const res = await client.embeddings.create({ model: 'text-embedding-3-small', input: ['hello world', 'other', 'hello world'] });
	assert.equal(res.object, 'list');
	assert.equal(res.data.length, 3);
	const [a, b, c] = res.data.map((d) => d.embedding);
	assert.equal(a.length, 64);
	assert.deepEqual(a, c);
	assert.notDeepEqual(a, b);
	const norm = Math.hypot(...a);
	assert.ok(Math.abs(norm - 1) < 1e-5, `norm ${norm}`);
	assert.equal(res.usage.prompt_tokens, 5);
});

test('embeddings.create with float and dimensions', async () => {
	const res = await client.embeddings.create({ model: 'm', input: 'hi', encoding_format: 'float', dimensions: 8 });
	assert.equal(res.data[0].embedding.length, 8);
});

test('legacy completions, streamed', async () => {
	const stream = await client.completions.create({ model: 'gpt-3.5-turbo-instruct', prompt: 'hello there', stream: true });
	let text = '';
	let chunks = 0;
	for await (const c of stream) {
		chunks++;
		text += c.choices[0]?.text ?? '';
	}
	assert.equal(text, 'Echo: hello there This is naïve 流式 text ');
	assert.ok(chunks >= 8, `${chunks} chunks`);
});

test('an unknown path is refused in OpenAI\'s error shape', async () => {
	await assert.rejects(client.files.list(), (err) => {
		assert.ok(err instanceof OpenAI.NotFoundError, String(err));
		assert.match(err.message, /does not serve/);
		return true;
	});
});
