// Browser end-to-end harness: a real stompline serving the built app, and
// Debian's Chromium driven by playwright-core.

import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';

import { Server, unique } from '../../packages/client/test/harness.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const WEB = path.resolve(HERE, '..');
export const DIST = path.join(WEB, 'dist');
export const SHOTS = process.env.STOMPLINE_SCREENSHOTS_DIR ?? path.join(WEB, 'test-results', 'screenshots');

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Builds the app when there is no build yet. */
export function ensureBuilt(): void {
  if (!existsSync(path.join(DIST, 'index.html'))) {
    execFileSync('npm', ['run', 'build'], { cwd: WEB, stdio: 'inherit' });
  }
}

export async function startServer(env: Record<string, string> = {}): Promise<Server> {
  ensureBuilt();
  return Server.start({ env: { STOMPLINE_WEB_DIR: DIST, ...env } });
}

export async function launch(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true });
}

export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

export interface Person {
  username: string;
  password: string;
  context: BrowserContext;
  page: Page;
}

/** A new browser context (its own storage) on the app. */
export async function openPage(browser: Browser, server: Server, viewport = DESKTOP): Promise<{ context: BrowserContext; page: Page }> {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  page.on('pageerror', (e) => console.error(`page error: ${e.message}`));
  await page.goto(server.baseUrl);
  return { context, page };
}

/** Registers a fresh user through the app's form and waits for the chat screen. */
export async function registerInBrowser(browser: Browser, server: Server, prefix: string, viewport = DESKTOP): Promise<Person> {
  const { context, page } = await openPage(browser, server, viewport);
  const username = unique(prefix);
  const password = `pw-${username}`;
  await page.getByRole('tab', { name: 'Register' }).click();
  const form = page.getByRole('form', { name: 'Register' });
  await form.getByLabel('Username').fill(username);
  await form.getByLabel('Display name').fill(prefix.charAt(0).toUpperCase() + prefix.slice(1));
  await form.getByLabel('Password').fill(password);
  await form.getByRole('button', { name: 'Create account' }).click();
  await page.getByRole('tab', { name: 'Chats' }).waitFor();
  return { username, password, context, page };
}

/** Opens the direct conversation with `other` from the People tab. */
export async function messageUser(p: Person, other: Person): Promise<void> {
  await p.page.getByRole('tab', { name: 'People' }).click();
  await p.page.getByLabel('Find people').fill(other.username);
  await p.page.getByRole('button', { name: `Message ${other.username}` }).click();
  await p.page.getByRole('region', { name: /^Chat:/ }).waitFor();
}

export async function sendText(p: Person, text: string): Promise<void> {
  const box = p.page.getByRole('textbox', { name: 'Message' });
  await box.fill(text);
  await box.press('Enter');
}

export async function shot(page: Page, name: string): Promise<void> {
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
}

/** Message bodies shown in the open chat, top to bottom. */
export function bodies(page: Page): Promise<string[]> {
  return page.getByTestId('message-body').allTextContents();
}
