// The official openai SDK (6.x) against a real parley server: every JSON body and SSE chunk
// it receives is validated against OpenAI's published schemas.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { conforms, startParley } from './helpers.js';

let node;
let tenant;
let client;

before(async () => {
  node = await startParley();
  // Generous limits, so that every response carries the rate-limit headers.
  tenant = await node.tenantKey('e2e-main', { limits: { requests_per_minute: 1000, tokens_per_minute: 1000000 } });
  client = new OpenAI({ apiKey: tenant.key, baseURL: node.baseURL, maxRetries: 0, timeout: 15000 });
});

after(async () => {
  await node?.stop();
});

describe('parley with the official openai SDK', { timeout: 60000 }, () => {
  test('models.list returns the tenant models in the official shape', async () => {
    const page = await client.models.list();
    const ids = page.data.map((m) => m.id);
    assert.ok(ids.includes('parley-echo'));
    for (const m of page.data) conforms('Model', m);
    conforms('ListModelsResponse', { object: 'list', data: page.data });
  });

  test('a non-streaming completion echoes the message with usage', async () => {
    const res = await client.chat.completions.create({
      model: 'parley-echo',
      messages: [{ role: 'user', content: 'hello e2e world' }],
    });
    conforms('CreateChatCompletionResponse', res);
    assert.equal(res.choices[0].message.content, 'hello e2e world');
    assert.equal(res.choices[0].finish_reason, 'stop');
    assert.ok(res.usage.prompt_tokens > 0);
    assert.equal(res.usage.completion_tokens, 3);
    assert.equal(res.usage.total_tokens, res.usage.prompt_tokens + res.usage.completion_tokens);
  });

  test('a streamed completion yields conforming chunks and exactly one usage chunk', async () => {
    const stream = await client.chat.completions.create({
      model: 'parley-echo',
      messages: [{ role: 'user', content: 'stream me please' }],
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let usageChunks = 0;
    let chunks = 0;
    let last;
    for await (const chunk of stream) {
      conforms('CreateChatCompletionStreamResponse', chunk);
      chunks += 1;
      last = chunk;
      if (chunk.usage) usageChunks += 1;
      for (const c of chunk.choices) text += c.delta?.content ?? '';
    }
    assert.equal(text, 'stream me please');
    assert.equal(usageChunks, 1);
    assert.deepEqual(last.choices, []);
    assert.equal(last.usage.completion_tokens, 3);
    assert.ok(chunks >= 5);
  });

  test('the chat.completions.stream helper assembles the final completion', async () => {
    const runner = client.chat.completions.stream({
      model: 'parley-echo',
      messages: [{ role: 'user', content: 'helper assembled text' }],
    });
    runner.on('chunk', (chunk) => conforms('CreateChatCompletionStreamResponse', chunk));
    const final = await runner.finalChatCompletion();
    assert.equal(final.choices[0].message.content, 'helper assembled text');
  });

  test('responses carry the rate-limit headers and the SDK still parses them', async () => {
    const { data, response } = await client.chat.completions
      .create({ model: 'parley-echo', messages: [{ role: 'user', content: 'with headers' }] })
      .withResponse();
    conforms('CreateChatCompletionResponse', data);
    assert.equal(data.choices[0].message.content, 'with headers');
    assert.equal(response.headers.get('x-ratelimit-limit-requests'), '1000');
    assert.ok(Number(response.headers.get('x-ratelimit-remaining-requests')) < 1000);
    assert.equal(response.headers.get('x-ratelimit-limit-tokens'), '1000000');
    assert.ok(response.headers.get('ratelimit-policy').includes('"requests";q=1000;w=60'));
    assert.ok(response.headers.get('x-request-id'));
    const models = await client.models.list().withResponse();
    assert.equal(models.response.headers.get('x-ratelimit-limit-requests'), '1000');
  });

  test('max_tokens cuts the reply with finish_reason length', async () => {
    const res = await client.chat.completions.create({
      model: 'parley-echo',
      max_tokens: 2,
      messages: [{ role: 'user', content: 'one two three four five' }],
    });
    conforms('CreateChatCompletionResponse', res);
    assert.equal(res.choices[0].finish_reason, 'length');
    assert.equal(res.usage.completion_tokens, 2);
  });

  test('errors surface as the SDK error classes with conforming bodies', async () => {
    const wrong = new OpenAI({ apiKey: 'prly_wrong_' + 'x'.repeat(43), baseURL: node.baseURL, maxRetries: 0 });
    await assert.rejects(
      wrong.chat.completions.create({ model: 'parley-echo', messages: [{ role: 'user', content: 'x' }] }),
      (err) => {
        assert.ok(err instanceof OpenAI.AuthenticationError);
        assert.equal(err.status, 401);
        assert.equal(err.code, 'invalid_api_key');
        conforms('Error', err.error);
        return true;
      },
    );
    await assert.rejects(client.chat.completions.create({ model: 'parley-echo', messages: [] }), (err) => {
      assert.ok(err instanceof OpenAI.BadRequestError);
      assert.equal(err.status, 400);
      assert.equal(err.param, 'messages');
      conforms('Error', err.error);
      return true;
    });
    await assert.rejects(
      client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }),
      (err) => {
        assert.ok(err instanceof OpenAI.NotFoundError);
        assert.equal(err.status, 404);
        assert.equal(err.code, 'model_not_found');
        conforms('Error', err.error);
        return true;
      },
    );
  });

  test('a multi-turn conversation keeps its history, checked in the database', async () => {
    const created = await client.post('/conversations', { body: { metadata: { suite: 'e2e' } } });
    const id = created.id;
    assert.match(id, /^conv_/);
    for (const text of ['first e2e turn', 'second e2e turn']) {
      const res = await client.chat.completions.create({
        model: 'parley-echo',
        conversation: id, // parley's extension: the server keeps the history
        messages: [{ role: 'user', content: text }],
      });
      conforms('CreateChatCompletionResponse', res);
      assert.equal(res.choices[0].message.content, text);
    }
    const items = await client.get(`/conversations/${id}/items`);
    assert.deepEqual(items.data.map((i) => i.role), ['user', 'assistant', 'user', 'assistant']);
    assert.deepEqual(items.data.map((i) => i.content[0].text),
      ['first e2e turn', 'first e2e turn', 'second e2e turn', 'second e2e turn']);
    const rows = node.sql(`select seq || ':' || role from messages where conversation_id = '${id}' order by seq`);
    assert.deepEqual(rows, ['1:user', '2:assistant', '3:user', '4:assistant']);
  });

  test("another tenant gets 404 for a conversation on every route", async () => {
    const created = await client.post('/conversations', { body: {} });
    await client.chat.completions.create({
      model: 'parley-echo', conversation: created.id, messages: [{ role: 'user', content: 'private' }],
    });
    const other = await node.tenantKey('e2e-other');
    const intruder = new OpenAI({ apiKey: other.key, baseURL: node.baseURL, maxRetries: 0 });
    const notFound = (err) => {
      assert.ok(err instanceof OpenAI.NotFoundError, String(err));
      conforms('Error', err.error);
      return true;
    };
    await assert.rejects(intruder.get(`/conversations/${created.id}`), notFound);
    await assert.rejects(intruder.get(`/conversations/${created.id}/items`), notFound);
    await assert.rejects(intruder.delete(`/conversations/${created.id}`), notFound);
    await assert.rejects(intruder.chat.completions.create({
      model: 'parley-echo', conversation: created.id, messages: [{ role: 'user', content: 'x' }],
    }), notFound);
    const mine = await client.get(`/conversations/${created.id}/items`);
    assert.equal(mine.data.length, 2);
  });
});
