// The official openai SDK through parley to an OpenAI-compatible upstream (the scripted fake
// upstream process): parley's own provider client, SSE parser and relay on the path.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { HOOK_TIMEOUT, TEST_TIMEOUT, conforms, errorConforms, startFakeUpstream, startParley } from './helpers.js';

const T = { timeout: TEST_TIMEOUT };

let upstream;
let node;
let client;

before(async () => {
  upstream = await startFakeUpstream();
  node = await startParley({ PARLEY_UPSTREAM_URL: upstream.url, PARLEY_UPSTREAM_KEY: 'sk-e2e-upstream' });
  const tenant = await node.tenantKey('e2e-upstream');
  client = new OpenAI({ apiKey: tenant.key, baseURL: node.baseURL, maxRetries: 0, timeout: 15000 });
}, { timeout: HOOK_TIMEOUT });

after(async () => {
  await node?.stop();
  await upstream?.stop();
}, { timeout: HOOK_TIMEOUT });

describe('parley relaying an upstream to the official openai SDK', () => {
  test('a non-streaming completion comes back from the upstream', T, async () => {
    const res = await client.chat.completions.create({
      model: 'fake-model',
      messages: [{ role: 'user', content: 'via upstream' }],
    });
    conforms('CreateChatCompletionResponse', res);
    assert.equal(res.choices[0].message.content, 'echo: via upstream');
    assert.equal(res.model, 'fake-model');
    assert.equal(res.usage.completion_tokens, 3);
  });

  test('a streamed completion from the upstream conforms chunk by chunk', T, async () => {
    const stream = await client.chat.completions.create({
      model: 'fake-model',
      messages: [{ role: 'user', content: 'SCRIPT:{"tokens_per_second":100} streamed upstream words' }],
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let usage = 0;
    for await (const chunk of stream) {
      conforms('CreateChatCompletionStreamResponse', chunk);
      if (chunk.usage) usage += 1;
      for (const c of chunk.choices) text += c.delta?.content ?? '';
    }
    assert.equal(text, 'echo: streamed upstream words');
    assert.equal(usage, 1);
  });

  test('the stream helper and an upstream error class both work', T, async () => {
    const runner = client.chat.completions
      .stream({ model: 'fake-model', messages: [{ role: 'user', content: 'helper path' }] });
    runner.on('chunk', (chunk) => conforms('CreateChatCompletionStreamResponse', chunk));
    const final = await runner.finalChatCompletion();
    assert.equal(final.choices[0].message.content, 'echo: helper path');
    await assert.rejects(
      client.chat.completions.create({ model: 'fake-model', messages: [{ role: 'user', content: 'SCRIPT:{"status":500}' }] }),
      (err) => {
        assert.ok(err instanceof OpenAI.InternalServerError);
        assert.equal(err.status, 502);
        errorConforms(err);
        return true;
      },
    );
  });
});
