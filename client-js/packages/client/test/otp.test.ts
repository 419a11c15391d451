// Signing in by email code through the SDK against the server's development
// mailbox (no SMTP configured): the code is read from `<data-dir>/mailbox/`.

import { expect, test } from 'vitest';

import { eventually, lifecycle, mailboxCode, sdk, unique } from './harness.ts';
import { ApiError } from './sdk.ts';

const life = lifecycle();

test('requestOtp and verifyOtp sign in (creating the account) and connect', async () => {
  const server = await life.server();
  const client = life.track(sdk(server.http));
  const email = `${unique('otp')}@example.test`;
  await client.requestOtp({ email });
  const code = await mailboxCode(server, email);

  const wrong = `${code.slice(0, 5)}${(Number(code.slice(5)) + 1) % 10}`;
  const refused = await client.verifyOtp({ email, code: wrong }).catch((e: unknown) => e);
  expect(refused).toBeInstanceOf(ApiError);
  expect((refused as ApiError).status).toBe(401);
  expect((refused as ApiError).code).toBe('invalid_code');
  expect(client.api.tokens.current).toBeNull();

  const user = await client.verifyOtp({ email, code });
  expect(client.userId).toBe(user.id);
  expect((await client.api.me()).id).toBe(user.id);
  await client.start();
  await eventually(() => client.isConnected, 'connected with the code-issued tokens');
});
