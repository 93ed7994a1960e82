// The official openai SDK (6.x) against a real parley server running the built-in parley-echo
// model: every JSON body and SSE chunk the tests receive is validated against OpenAI's
// published schemas (see helpers.js for how the schema file is loaded).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { HOOK_TIMEOUT, TEST_TIMEOUT, conforms, errorConforms, startParley } from './helpers.js';

const T = { timeout: TEST_TIMEOUT };

let node;
let tenant;
let client;

before(async () => {
  node = await startParley();
  // Generous limits, so that every response carries the rate-limit headers.
  tenant = await node.tenantKey('e2e-main', { limits: { requests_per_minute: 1000, tokens_per_minute: 1000000 } });
  client = new OpenAI({ apiKey: tenant.key, baseURL: node.baseURL, maxRetries: 0, timeout: 15000 });
}, { timeout: HOOK_TIMEOUT });

after(async () => {
  await node?.stop();
}, { timeout: HOOK_TIMEOUT });

/// One user message for parley-echo.
const ask = (content, extra = {}) => ({ model: 'parley-echo', messages: [{ role: 'user', content }], ...extra });

/// An assert.rejects predicate: the SDK error class, status, optional code/param, conforming body.
function apiError(cls, status, fields = {}) {
  return (err) => {
    assert.ok(err instanceof cls, `expected ${cls.name}, got ${err?.constructor?.name}: ${err?.message}`);
    assert.ok(err instanceof OpenAI.APIError);
    assert.equal(err.status, status);
    for (const [k, v] of Object.entries(fields)) assert.equal(err[k], v, `error ${k}`);
    errorConforms(err);
    return true;
  };
}

describe('parley with the official openai SDK', () => {
  test('1. models.list() returns parley-echo for a tenant key', T, async () => {
    const page = await client.models.list();
    conforms('ListModelsResponse', page.body); // the raw JSON body the page was built from
    assert.equal(page.body.object, 'list');
    for (const m of page.data) conforms('Model', m);
    assert.ok(page.data.some((m) => m.id === 'parley-echo'), JSON.stringify(page.data));
  });

  test('1b. models.retrieve() returns one model in the official shape', T, async () => {
    const m = await client.models.retrieve('parley-echo');
    conforms('Model', m);
    assert.equal(m.id, 'parley-echo');
  });

  test('2. a non-streaming completion echoes the message, finish_reason stop, consistent usage', T, async () => {
    const res = await client.chat.completions.create(ask('hello e2e world'));
    conforms('CreateChatCompletionResponse', res);
    assert.equal(res.object, 'chat.completion');
    assert.equal(res.choices.length, 1);
    assert.equal(res.choices[0].message.role, 'assistant');
    assert.equal(res.choices[0].message.content, 'hello e2e world');
    assert.equal(res.choices[0].finish_reason, 'stop');
    assert.ok(res.usage.prompt_tokens > 0, `prompt_tokens ${res.usage.prompt_tokens}`);
    assert.ok(res.usage.completion_tokens > 0, `completion_tokens ${res.usage.completion_tokens}`);
    assert.equal(res.usage.total_tokens, res.usage.prompt_tokens + res.usage.completion_tokens);
  });

  test('3. a streamed completion: deltas concatenate to the input, exactly one usage chunk (the last, no choices), every chunk conforms', T, async () => {
    const input = 'stream me please, chunk by chunk';
    const stream = await client.chat.completions.create(ask(input, {
      stream: true,
      stream_options: { include_usage: true },
    }));
    const chunks = [];
    for await (const chunk of stream) {
      conforms('CreateChatCompletionStreamResponse', chunk);
      chunks.push(chunk);
    }
    assert.ok(chunks.length >= 3, `only ${chunks.length} chunks`);
    const text = chunks.flatMap((c) => c.choices).map((c) => c.delta?.content ?? '').join('');
    assert.equal(text, input);
    const ids = new Set(chunks.map((c) => c.id));
    assert.equal(ids.size, 1, 'every chunk has the same id');
    const withUsage = chunks.filter((c) => c.usage);
    assert.equal(withUsage.length, 1, 'exactly one chunk carries usage');
    const last = chunks[chunks.length - 1];
    assert.equal(withUsage[0], last, 'the usage chunk is the last one');
    assert.deepEqual(last.choices, []);
    assert.ok(last.usage.prompt_tokens > 0 && last.usage.completion_tokens > 0);
    assert.equal(last.usage.total_tokens, last.usage.prompt_tokens + last.usage.completion_tokens);
    const finishes = chunks.flatMap((c) => c.choices).map((c) => c.finish_reason).filter((f) => f);
    assert.deepEqual(finishes, ['stop']);
  });

  test('4. the chat.completions.stream() helper: finalChatCompletion() content equals the input', T, async () => {
    const runner = client.chat.completions.stream(ask('helper assembled text'));
    let chunks = 0;
    runner.on('chunk', (chunk) => {
      chunks += 1;
      conforms('CreateChatCompletionStreamResponse', chunk);
    });
    const final = await runner.finalChatCompletion();
    assert.ok(chunks > 0);
    assert.equal(final.choices[0].message.content, 'helper assembled text');
    assert.equal(final.choices[0].finish_reason, 'stop');
  });

  test('5a. a wrong key is an OpenAI.AuthenticationError (401, invalid_api_key)', T, async () => {
    const wrong = new OpenAI({ apiKey: 'prly_wrong_' + 'x'.repeat(43), baseURL: node.baseURL, maxRetries: 0 });
    await assert.rejects(wrong.chat.completions.create(ask('x')),
                         apiError(OpenAI.AuthenticationError, 401, { code: 'invalid_api_key' }));
    await assert.rejects(wrong.models.list(),
                         apiError(OpenAI.AuthenticationError, 401, { code: 'invalid_api_key' }));
  });

  test('5b. messages: [] is an OpenAI.BadRequestError (400)', T, async () => {
    await assert.rejects(client.chat.completions.create({ model: 'parley-echo', messages: [] }),
                         apiError(OpenAI.BadRequestError, 400, { param: 'messages' }));
  });

  test('5c. an unknown model is an OpenAI.NotFoundError (404, model_not_found)', T, async () => {
    await assert.rejects(client.chat.completions.create({ ...ask('x'), model: 'no-such-model' }),
                         apiError(OpenAI.NotFoundError, 404, { code: 'model_not_found' }));
  });

  test('6. max_tokens: 2 on a five-word message stops with finish_reason length after 2 tokens', T, async () => {
    const res = await client.chat.completions.create(ask('one two three four five', { max_tokens: 2 }));
    conforms('CreateChatCompletionResponse', res);
    assert.equal(res.choices[0].finish_reason, 'length');
    assert.equal(res.usage.completion_tokens, 2);
    assert.equal(res.usage.total_tokens, res.usage.prompt_tokens + 2);
    assert.ok('one two three four five'.startsWith(res.choices[0].message.content),
              `content ${JSON.stringify(res.choices[0].message.content)}`);
    assert.ok(res.choices[0].message.content.length < 'one two three four five'.length);
  });

  test('7. a multi-turn conversation keeps its history in order, also in the database', T, async () => {
    const created = await node.v1(tenant.key, 'POST', '/conversations', { metadata: { k: 'v' } });
    assert.ok(created.status === 200 || created.status === 201, `status ${created.status} ${JSON.stringify(created.body)}`);
    const id = created.body.id;
    assert.match(id, /^conv_/);
    assert.equal(created.body.object, 'conversation');
    assert.deepEqual(created.body.metadata, { k: 'v' });

    const turns = ['first e2e turn', 'second e2e turn'];
    const promptTokens = [];
    for (const text of turns) {
      const { data: res, response } = await client.chat.completions
        .create(ask(text, { conversation: id })) // parley's extension field, passed through by the SDK
        .withResponse();
      conforms('CreateChatCompletionResponse', res);
      assert.equal(res.choices[0].message.content, text);
      assert.equal(response.headers.get('x-parley-conversation-id'), id);
      promptTokens.push(res.usage.prompt_tokens);
    }
    // The second turn's prompt included the stored history (same-length messages otherwise).
    assert.ok(promptTokens[1] > promptTokens[0], `prompt tokens ${promptTokens}`);
    const items = await node.v1(tenant.key, 'GET', `/conversations/${id}/items`);
    assert.equal(items.status, 200, JSON.stringify(items.body));
    assert.equal(items.body.object, 'list');
    assert.equal(items.body.data.length, 4);
    assert.deepEqual(items.body.data.map((i) => i.role), ['user', 'assistant', 'user', 'assistant']);
    assert.deepEqual(items.body.data.map((i) => i.content[0].text),
                     [turns[0], turns[0], turns[1], turns[1]]);
    assert.deepEqual(items.body.data.map((i) => i.content[0].type),
                     ['input_text', 'output_text', 'input_text', 'output_text']);
    for (const item of items.body.data) assert.equal(item.type, 'message');

    const rows = node.sql(`select seq, role from messages where conversation_id='${id}' order by seq`);
    assert.equal(rows.length, 4, rows.join('\n'));
    assert.deepEqual(rows.map((r) => r.split('|')[1]), ['user', 'assistant', 'user', 'assistant']);
    const seqs = rows.map((r) => Number(r.split('|')[0]));
    assert.deepEqual([...seqs].sort((a, b) => a - b), seqs);
    assert.equal(new Set(seqs).size, 4);
  });

  test('8. another tenant gets 404 (NotFoundError) for a conversation on every route, and the owner keeps it', T, async () => {
    const created = await node.v1(tenant.key, 'POST', '/conversations', { metadata: {} });
    assert.ok(created.status === 200 || created.status === 201);
    const id = created.body.id;
    await client.chat.completions.create(ask('private words', { conversation: id }));

    const other = await node.tenantKey('e2e-other');
    const intruder = new OpenAI({ apiKey: other.key, baseURL: node.baseURL, maxRetries: 0, timeout: 15000 });
    const notFound = apiError(OpenAI.NotFoundError, 404);
    await assert.rejects(intruder.get(`/conversations/${id}`), notFound);
    await assert.rejects(intruder.get(`/conversations/${id}/items`), notFound);
    await assert.rejects(intruder.delete(`/conversations/${id}`), notFound);
    await assert.rejects(intruder.chat.completions.create(ask('let me in', { conversation: id })), notFound);
    await assert.rejects(
      intruder.chat.completions.create(ask('let me in', { conversation: id, stream: true })), notFound);

    // Untouched for its owner: still there, still two items, nothing added by the intruder.
    const mine = await client.get(`/conversations/${id}/items`);
    assert.deepEqual(mine.data.map((i) => i.content[0].text), ['private words', 'private words']);
    const rows = node.sql(`select count(*) from messages where conversation_id='${id}'`);
    assert.deepEqual(rows, ['2']);
  });

  test('responses carry the rate-limit headers and the SDK still parses them', T, async () => {
    const { data, response } = await client.chat.completions.create(ask('with headers')).withResponse();
    conforms('CreateChatCompletionResponse', data);
    assert.equal(data.choices[0].message.content, 'with headers');
    assert.equal(response.headers.get('x-ratelimit-limit-requests'), '1000');
    assert.ok(Number(response.headers.get('x-ratelimit-remaining-requests')) < 1000);
    assert.equal(response.headers.get('x-ratelimit-limit-tokens'), '1000000');
    assert.ok(response.headers.get('ratelimit-policy').includes('"requests";q=1000;w=60'));
    assert.ok(response.headers.get('x-request-id'));
    const models = await client.models.list().withResponse();
    conforms('ListModelsResponse', models.data.body);
    assert.equal(models.response.headers.get('x-ratelimit-limit-requests'), '1000');
  });
});
