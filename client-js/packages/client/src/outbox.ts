// Messages typed by the user and not yet confirmed durable. Each carries a
// clientMsgId, so a retry after a reconnect (or a reload) stores nothing new.

import type { OutboxItem } from './types.ts';

/** Where the outbox lives between reconnects and page loads. */
export interface OutboxStorage {
  load(): OutboxItem[];
  save(items: OutboxItem[]): void;
}

/** Keeps the outbox in memory only (survives reconnects, not a restart). */
export function memoryStorage(): OutboxStorage {
  let items: OutboxItem[] = [];
  return {
    load: () => items.map((i) => ({ ...i })),
    save: (next) => {
      items = next.map((i) => ({ ...i }));
    },
  };
}

/** Keeps the outbox in `localStorage` (or any Storage) under `key`. */
export function webStorage(key: string, storage: Pick<Storage, 'getItem' | 'setItem'> = globalThis.localStorage): OutboxStorage {
  return {
    load: () => {
      try {
        const raw = storage.getItem(key);
        const parsed: unknown = raw ? JSON.parse(raw) : [];
        return Array.isArray(parsed) ? (parsed as OutboxItem[]) : [];
      } catch {
        return [];
      }
    },
    save: (items) => {
      try {
        storage.setItem(key, JSON.stringify(items));
      } catch {
        // Quota or privacy mode: the in-memory copy still works.
      }
    },
  };
}

/** A random UUID (v4), also where `crypto.randomUUID` is missing (plain-HTTP origins). */
export function newClientMsgId(): string {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') {
    try {
      return c.randomUUID();
    } catch {
      // Not a secure context: fall through.
    }
  }
  const b = new Uint8Array(16);
  if (c && typeof c.getRandomValues === 'function') c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = ((b[6] ?? 0) & 0x0f) | 0x40;
  b[8] = ((b[8] ?? 0) & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** The ordered list of unsent messages, written through to its storage. */
export class Outbox {
  private items: OutboxItem[];

  constructor(private readonly storage: OutboxStorage) {
    this.items = storage.load();
  }

  all(): OutboxItem[] {
    return this.items.map((i) => ({ ...i }));
  }

  pending(): OutboxItem[] {
    return this.items.filter((i) => i.state === 'pending');
  }

  get(clientMsgId: string): OutboxItem | undefined {
    return this.items.find((i) => i.clientMsgId === clientMsgId);
  }

  add(item: OutboxItem): void {
    this.items.push(item);
    this.save();
  }

  update(clientMsgId: string, patch: Partial<OutboxItem>): void {
    const i = this.items.findIndex((x) => x.clientMsgId === clientMsgId);
    if (i < 0) return;
    this.items[i] = { ...(this.items[i] as OutboxItem), ...patch };
    this.save();
  }

  remove(clientMsgId: string): boolean {
    const before = this.items.length;
    this.items = this.items.filter((i) => i.clientMsgId !== clientMsgId);
    if (this.items.length === before) return false;
    this.save();
    return true;
  }

  private save(): void {
    this.storage.save(this.items);
  }
}
