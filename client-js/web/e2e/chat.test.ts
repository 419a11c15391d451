// Two and three people chatting in real browsers against a real server.

import { afterAll, beforeAll, expect, test } from 'vitest';
import type { Browser } from 'playwright-core';

import type { Server } from '../../packages/client/test/harness.ts';
import { bodies, launch, messageUser, openPage, PHONE, registerInBrowser, sendText, shot, startServer } from './browser.ts';

let server: Server;
let browser: Browser;

beforeAll(async () => {
  server = await startServer();
  browser = await launch();
});

afterAll(async () => {
  await browser?.close();
  await server?.dispose();
});

const until = async (probe: () => Promise<boolean>, what: string, ms = 20_000) => {
  const deadline = Date.now() + ms;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
};

test('two people find each other and chat with typing, delivered and read marks and unread badges', async () => {
  const signIn = await openPage(browser, server);
  await signIn.page.getByRole('form', { name: 'Sign in' }).waitFor();
  await shot(signIn.page, 'sign-in');
  await signIn.context.close();

  const alice = await registerInBrowser(browser, server, 'alice');
  const bob = await registerInBrowser(browser, server, 'bob');
  await shot(bob.page, 'empty-chats');

  await messageUser(alice, bob);
  await sendText(alice, 'hello bob');
  const aliceMarks = alice.page.getByTestId('mark');
  await until(async () => (await aliceMarks.last().getAttribute('data-status')) === 'delivered', 'delivered mark');

  // Bob has not opened it: an unread badge with the last message.
  const badge = bob.page.getByTestId('unread-badge');
  await badge.waitFor();
  expect(await badge.textContent()).toBe('1');
  await sendText(alice, 'are you there?');
  await until(async () => (await badge.textContent()) === '2', 'badge 2');
  await expect.poll(() => bob.page.getByRole('button', { name: /are you there\?/ }).count()).toBe(1);
  await shot(bob.page, 'conversation-list-unread');

  await bob.page.getByRole('button', { name: /are you there\?/ }).click();
  await until(async () => (await bodies(bob.page)).includes('are you there?'), 'bob sees the messages');
  expect(await bodies(bob.page)).toEqual(['hello bob', 'are you there?']);
  await until(async () => (await badge.count()) === 0, 'badge cleared');
  await until(async () => (await aliceMarks.last().getAttribute('data-status')) === 'read', 'read mark at alice');

  // Typing shows on the other side.
  await bob.page.getByRole('textbox', { name: 'Message' }).pressSequentially('hi al');
  await until(async () => /typing/.test((await alice.page.getByTestId('chat-status').textContent()) ?? ''), 'typing indicator');
  await shot(alice.page, 'chat-typing');
  await bob.page.getByRole('textbox', { name: 'Message' }).fill('hi alice!');
  await bob.page.getByRole('textbox', { name: 'Message' }).press('Enter');
  await until(async () => (await bodies(alice.page)).includes('hi alice!'), 'reply at alice');
  expect(await bodies(alice.page)).toEqual(['hello bob', 'are you there?', 'hi alice!']);

  // Message bodies are text, never markup.
  const evil = '<img src=x onerror="window.__pwned=1"><b>bold?</b>';
  await sendText(alice, evil);
  await until(async () => (await bodies(bob.page)).includes(evil), 'markup shown as text');
  expect(await bob.page.evaluate(() => (window as unknown as { __pwned?: number }).__pwned)).toBeUndefined();
  expect(await bob.page.locator('.messages img, .messages b').count()).toBe(0);

  // Edit and delete.
  const last = alice.page.getByTestId('message').filter({ hasText: 'are you there?' });
  await last.hover();
  await last.getByRole('button', { name: 'Edit' }).click();
  await alice.page.getByLabel('Edit message').fill('are you there, bob?');
  await alice.page.getByLabel('Edit message').press('Enter');
  await until(async () => (await bodies(bob.page)).includes('are you there, bob?'), 'edit at bob');
  const first = alice.page.getByTestId('message').filter({ hasText: 'hello bob' });
  await first.hover();
  await first.getByRole('button', { name: 'Delete' }).click();
  await until(async () => (await bodies(bob.page)).includes('This message was deleted'), 'delete at bob');
  await shot(alice.page, 'chat-desktop');

  // The page reloaded mid-conversation shows the full history, then goes on.
  await bob.page.reload();
  await bob.page.getByRole('button', { name: /window.__pwned/ }).click();
  await until(async () => (await bodies(bob.page)).length === 4, 'history after reload');
  expect(await bodies(bob.page)).toEqual(['This message was deleted', 'are you there, bob?', 'hi alice!', evil]);
  await sendText(bob, 'back after a reload');
  await until(async () => (await bodies(alice.page)).includes('back after a reload'), 'message after reload');

  await alice.context.close();
  await bob.context.close();
});

test('a group of three', async () => {
  const ann = await registerInBrowser(browser, server, 'ann');
  const ben = await registerInBrowser(browser, server, 'ben');
  const cat = await registerInBrowser(browser, server, 'cat');

  await ann.page.getByRole('button', { name: 'New group' }).click();
  const dialog = ann.page.getByRole('dialog', { name: 'New group' });
  await dialog.getByLabel('Group name').fill('Trio');
  for (const p of [ben, cat]) {
    await dialog.getByLabel('Find people').fill(p.username);
    await dialog.getByRole('checkbox', { name: new RegExp(p.username) }).check();
  }
  await dialog.getByRole('button', { name: 'Create group' }).click();
  await ann.page.getByRole('region', { name: 'Chat: Trio' }).waitFor();
  await sendText(ann, 'welcome to Trio');

  for (const p of [ben, cat]) {
    await p.page.getByRole('button', { name: /Trio/ }).click();
    await until(async () => (await bodies(p.page)).includes('welcome to Trio'), `${p.username} sees the group`);
  }
  await sendText(ben, 'hi from ben');
  await sendText(cat, 'hi from cat');
  for (const p of [ann, ben, cat]) {
    await until(async () => (await bodies(p.page)).length === 3, `${p.username} sees three messages`);
    expect(new Set(await bodies(p.page))).toEqual(new Set(['welcome to Trio', 'hi from ben', 'hi from cat']));
  }
  await until(async () => (await ann.page.getByText(/Seen by/).count()) > 0, 'seen by in the group');

  // Rename and remove a member; the others see it.
  await ann.page.getByRole('button', { name: 'Members' }).click();
  const members = ann.page.getByRole('dialog', { name: 'Members' });
  await members.getByLabel('Group name').fill('Trio renamed');
  await members.getByRole('button', { name: 'Rename' }).click();
  await until(async () => (await ben.page.getByRole('region', { name: 'Chat: Trio renamed' }).count()) === 1, 'rename at ben');
  await shot(ann.page, 'group-members');
  await members.getByRole('button', { name: `Remove ${cat.username}` }).click();
  await ann.page.keyboard.press('Escape');
  await until(async () => (await cat.page.getByRole('button', { name: /Trio renamed/ }).count()) === 0, 'cat removed');
  await sendText(ben, 'just us now');
  await until(async () => (await bodies(ann.page)).includes('just us now'), 'ann after removal');
  await shot(ann.page, 'group-chat');

  for (const p of [ann, ben, cat]) await p.context.close();
});

test('history loads on scroll; phone layout; search; offline banner and recovery', async () => {
  const dee = await registerInBrowser(browser, server, 'dee');
  const eve = await registerInBrowser(browser, server, 'eve', PHONE);
  await messageUser(dee, eve);
  // A long history, sent from the app.
  for (let i = 1; i <= 70; i++) await sendText(dee, `line ${i}`);
  await until(async () => (await bodies(dee.page)).includes('line 70'), 'all sent');

  await eve.page.getByRole('button', { name: /line 70/ }).click();
  await until(async () => (await bodies(eve.page)).includes('line 70'), 'latest page on the phone');
  expect((await bodies(eve.page)).length).toBe(50);
  await shot(eve.page, 'phone-chat');
  // Scrolling up loads the rest.
  await until(async () => {
    await eve.page.getByTestId('messages').evaluate((el) => {
      el.scrollTop = 0;
      el.dispatchEvent(new Event('scroll'));
    });
    return (await bodies(eve.page)).length === 70;
  }, 'older history');
  expect((await bodies(eve.page))[0]).toBe('line 1');
  await eve.page.getByRole('button', { name: 'Back to conversations' }).click();
  await shot(eve.page, 'phone-list');

  // Message search.
  await dee.page.getByRole('tab', { name: 'Search' }).click();
  await dee.page.getByLabel('Search messages').fill('line 42');
  await dee.page.getByLabel('Search messages').press('Enter');
  await dee.page.getByRole('list', { name: 'Message search results' }).getByText('line 42').first().waitFor();
  await shot(dee.page, 'search');

  // The server goes away: a banner; it comes back: the banner goes, and a
  // message typed meanwhile is delivered once.
  await dee.page.getByRole('tab', { name: 'Chats' }).click();
  await server.stop();
  await dee.page.getByTestId('offline-banner').waitFor();
  await sendText(dee, 'sent while offline');
  await shot(dee.page, 'offline');
  await server.restart();
  await until(async () => (await dee.page.getByTestId('offline-banner').count()) === 0, 'banner gone');
  await eve.page.getByRole('button', { name: /sent while offline/ }).click();
  await until(async () => (await bodies(eve.page)).filter((b) => b === 'sent while offline').length === 1, 'offline message delivered once');
  await until(async () => (await dee.page.getByTestId('mark').last().getAttribute('data-status')) !== 'pending', 'sent mark');

  await dee.context.close();
  await eve.context.close();
});
