import { useCallback, useEffect, useLayoutEffect, useRef, useState, type FormEvent, type KeyboardEvent } from 'react';
import type { Conversation, Message, OutboxItem, User } from '@stompline/client';

import { conversationTitle, otherMember, store, useChat, userName } from '../store.ts';
import { Dialog, PresenceDot } from './Dialog.tsx';

const EMPTY: Message[] = [];

export function ChatPanel({ cid }: { cid: string }) {
  const conv = useChat((s) => s.conversations.find((c) => c.id === cid));
  const users = useChat((s) => s.users);
  const me = useChat((s) => s.me);
  const presence = useChat((s) => s.presence);
  const typing = useChat((s) => s.typing[cid]);
  const [managing, setManaging] = useState(false);
  const close = useCallback(() => setManaging(false), []);
  if (!conv) return <div className="empty-main">This conversation is no longer available.</div>;
  const title = conversationTitle(conv, { users, me });
  const other = otherMember(conv, me?.id);
  const typers = Object.keys(typing ?? {}).filter((id) => id !== me?.id);
  const status = typers.length
    ? `${typers.map((id) => userName(users[id], id)).join(', ')} ${typers.length === 1 ? 'is' : 'are'} typing…`
    : other
      ? (presence[other] ?? 'offline')
      : `${conv.members.length} members`;
  return (
    <section className="chat" aria-label={`Chat: ${title}`}>
      <header className="chat-head">
        <button type="button" className="link back" onClick={() => store.select(null)} aria-label="Back to conversations">
          ←
        </button>
        <div className="chat-title">
          <h2>
            {other && <PresenceDot status={presence[other]} />} {title}
          </h2>
          <p className="muted" aria-live="polite" data-testid="chat-status">
            {status}
          </p>
        </div>
        <button type="button" className="secondary" onClick={() => setManaging(true)}>
          {conv.type === 'group' ? 'Members' : 'Details'}
        </button>
      </header>
      <MessageList conv={conv} />
      <Composer cid={cid} />
      {managing && <Members conv={conv} onClose={close} />}
    </section>
  );
}

function MessageList({ conv }: { conv: Conversation }) {
  const cid = conv.id;
  const messages = useChat((s) => s.messages[cid]) ?? EMPTY;
  const outbox = useChat((s) => s.outbox);
  const done = useChat((s) => s.historyDone[cid]);
  const loadingOlder = useChat((s) => s.loadingOlder[cid]);
  const users = useChat((s) => s.users);
  const me = useChat((s) => s.me);
  const reads = useChat((s) => s.reads[cid]);
  const delivered = useChat((s) => s.delivered[cid]);
  const ref = useRef<HTMLOListElement>(null);
  const prev = useRef<{ first: number | undefined; height: number; nearBottom: boolean }>({
    first: undefined,
    height: 0,
    nearBottom: true,
  });
  const pending = outbox.filter((o) => o.conversationId === cid && !messages.some((m) => m.clientMsgId === o.clientMsgId));

  useLayoutEffect(() => {
    const el = ref.current;
    if (!el) return;
    const first = messages[0]?.seq;
    const p = prev.current;
    if (p.first !== undefined && first !== undefined && first < p.first) {
      // Older messages were put on top: keep what the reader was looking at in place.
      el.scrollTop += el.scrollHeight - p.height;
    } else if (p.nearBottom) {
      el.scrollTop = el.scrollHeight;
    }
    prev.current = { first, height: el.scrollHeight, nearBottom: p.nearBottom };
    if (el.scrollHeight <= el.clientHeight && !done && messages.length > 0) void store.loadOlder(cid);
  }, [messages, pending.length, cid, done]);

  const onScroll = () => {
    const el = ref.current;
    if (!el) return;
    prev.current.nearBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 80;
    prev.current.height = el.scrollHeight;
    if (el.scrollTop < 120) void store.loadOlder(cid);
  };

  const others = conv.members.map((m) => m.userId).filter((id) => id !== me?.id);
  const mark = (m: Message): 'sent' | 'delivered' | 'read' => {
    if (others.some((id) => (reads?.[id] ?? 0) >= m.seq)) return 'read';
    if (others.some((id) => (delivered?.[id] ?? 0) >= m.seq)) return 'delivered';
    return 'sent';
  };
  const lastMine = [...messages].reverse().find((m) => m.senderId === me?.id && !m.deletedAt);
  const readers = lastMine ? others.filter((id) => (reads?.[id] ?? 0) >= lastMine.seq) : [];

  return (
    <ol className="messages" ref={ref} onScroll={onScroll} aria-label="Messages" tabIndex={0} data-testid="messages">
      <li className="history-edge muted" aria-live="polite">
        {done ? 'Start of the conversation' : loadingOlder ? 'Loading earlier messages…' : ''}
      </li>
      {messages.map((m) => (
        <MessageRow
          key={m.seq}
          m={m}
          mine={m.senderId === me?.id}
          sender={users[m.senderId]}
          showSender={conv.type === 'group'}
          mark={m.senderId === me?.id ? mark(m) : undefined}
          seenBy={m === lastMine && conv.type === 'group' && readers.length ? readers.map((id) => userName(users[id], id)) : undefined}
        />
      ))}
      {pending.map((o) => (
        <PendingRow key={o.clientMsgId} item={o} />
      ))}
    </ol>
  );
}

function time(iso: string): string {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '' : d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

const MARK_LABEL = { sent: 'Sent', delivered: 'Delivered', read: 'Read' } as const;
const MARK_GLYPH = { sent: '✓', delivered: '✓✓', read: '✓✓' } as const;

function MessageRow({
  m,
  mine,
  sender,
  showSender,
  mark,
  seenBy,
}: {
  m: Message;
  mine: boolean;
  sender: User | undefined;
  showSender: boolean;
  mark: 'sent' | 'delivered' | 'read' | undefined;
  seenBy: string[] | undefined;
}) {
  const [editing, setEditing] = useState(false);
  const [draft, setDraft] = useState(m.body);
  const save = (e: FormEvent) => {
    e.preventDefault();
    if (!draft.trim() || draft === m.body) {
      setEditing(false);
      return;
    }
    store.edit(m.id, draft).then(() => setEditing(false), () => {});
  };
  const deleted = m.deletedAt !== null;
  return (
    <li className={`msg ${mine ? 'mine' : 'theirs'} ${deleted ? 'deleted' : ''}`} data-seq={m.seq} data-testid="message">
      {showSender && !mine && <span className="sender">{userName(sender, m.senderId)}</span>}
      {editing ? (
        <form onSubmit={save} className="edit-form">
          <input
            aria-label="Edit message"
            value={draft}
            onChange={(e) => setDraft(e.target.value)}
            onKeyDown={(e) => e.key === 'Escape' && setEditing(false)}
            autoFocus
          />
          <button type="submit" className="secondary">
            Save
          </button>
          <button type="button" className="link" onClick={() => setEditing(false)}>
            Cancel
          </button>
        </form>
      ) : (
        // Text only: React escapes it, so a body can never become markup.
        <p className="body" data-testid="message-body">
          {deleted ? 'This message was deleted' : m.body}
        </p>
      )}
      <span className="meta">
        {time(m.createdAt)}
        {m.editedAt && !deleted && <span className="muted"> · edited</span>}
        {mark && !deleted && (
          <span className={`mark ${mark}`} data-status={mark} aria-label={MARK_LABEL[mark]} title={MARK_LABEL[mark]} data-testid="mark">
            {MARK_GLYPH[mark]}
          </span>
        )}
      </span>
      {seenBy && <span className="seen muted">Seen by {seenBy.join(', ')}</span>}
      {mine && !deleted && !editing && (
        <span className="actions">
          <button
            type="button"
            className="link"
            onClick={() => {
              setDraft(m.body);
              setEditing(true);
            }}
          >
            Edit
          </button>
          <button type="button" className="link" onClick={() => void store.remove(m.id)}>
            Delete
          </button>
        </span>
      )}
    </li>
  );
}

function PendingRow({ item }: { item: OutboxItem }) {
  const failed = item.state === 'failed';
  return (
    <li className={`msg mine pending ${failed ? 'failed' : ''}`} data-testid="message">
      <p className="body" data-testid="message-body">
        {item.body}
      </p>
      <span className="meta">
        {failed ? (
          <span className="mark failed" data-status="failed" data-testid="mark">
            Not sent: {item.error?.message ?? 'error'}
          </span>
        ) : (
          <span className="mark pending" data-status="pending" aria-label="Sending" title="Sending" data-testid="mark">
            ◷
          </span>
        )}
      </span>
      {failed && (
        <span className="actions">
          <button type="button" className="link" onClick={() => store.retry(item.clientMsgId)}>
            Retry
          </button>
          <button type="button" className="link" onClick={() => store.discard(item.clientMsgId)}>
            Discard
          </button>
        </span>
      )}
    </li>
  );
}

function Composer({ cid }: { cid: string }) {
  const [text, setText] = useState('');
  const ref = useRef<HTMLTextAreaElement>(null);
  useEffect(() => ref.current?.focus(), [cid]);
  const send = () => {
    if (!text.trim()) return;
    store.send(cid, text);
    setText('');
  };
  const onKey = (e: KeyboardEvent<HTMLTextAreaElement>) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.nativeEvent.isComposing) {
      e.preventDefault();
      send();
    }
  };
  return (
    <form
      className="composer"
      onSubmit={(e) => {
        e.preventDefault();
        send();
      }}
    >
      <textarea
        ref={ref}
        aria-label="Message"
        placeholder="Write a message"
        title="Enter sends, Shift+Enter starts a new line"
        rows={1}
        value={text}
        maxLength={16_384}
        onChange={(e) => {
          setText(e.target.value);
          store.typing(cid, e.target.value.length > 0);
        }}
        onBlur={() => store.typing(cid, false)}
        onKeyDown={onKey}
      />
      <button type="submit" className="primary" disabled={!text.trim()}>
        Send
      </button>
    </form>
  );
}

function Members({ conv, onClose }: { conv: Conversation; onClose: () => void }) {
  const users = useChat((s) => s.users);
  const me = useChat((s) => s.me);
  const presence = useChat((s) => s.presence);
  const [name, setName] = useState(conv.name ?? '');
  const [query, setQuery] = useState('');
  const [found, setFound] = useState<User[]>([]);
  const myRole = conv.members.find((m) => m.userId === me?.id)?.role;
  const canManage = conv.type === 'group' && (myRole === 'owner' || myRole === 'admin');
  useEffect(() => {
    if (!query.trim()) {
      setFound([]);
      return;
    }
    const t = setTimeout(() => store.searchUsers(query).then(setFound, () => setFound([])), 200);
    return () => clearTimeout(t);
  }, [query]);
  const memberIds = new Set(conv.members.map((m) => m.userId));
  return (
    <Dialog title={conv.type === 'group' ? 'Members' : 'Details'} onClose={onClose}>
      {canManage && (
        <form
          className="row"
          onSubmit={(e) => {
            e.preventDefault();
            if (name.trim()) void store.rename(conv.id, name.trim());
          }}
        >
          <label className="grow">
            Group name
            <input name="rename" value={name} onChange={(e) => setName(e.target.value)} maxLength={100} />
          </label>
          <button type="submit" className="secondary">
            Rename
          </button>
        </form>
      )}
      <ul className="people" aria-label="Members">
        {conv.members.map((m) => (
          <li key={m.userId} className="person">
            <PresenceDot status={m.userId === me?.id ? 'online' : presence[m.userId]} />
            <span className="person-name">
              {userName(users[m.userId], m.userId)}
              {m.userId === me?.id ? ' (you)' : ''} <span className="muted">{m.role}</span>
            </span>
            {canManage && m.userId !== me?.id && (
              <button
                type="button"
                className="link"
                onClick={() => void store.removeMember(conv.id, m.userId)}
                aria-label={`Remove ${users[m.userId]?.username ?? m.userId}`}
              >
                Remove
              </button>
            )}
          </li>
        ))}
      </ul>
      {canManage && (
        <>
          <label>
            Add people
            <input type="search" name="addQuery" value={query} onChange={(e) => setQuery(e.target.value)} />
          </label>
          <ul className="people" aria-label="People to add">
            {found
              .filter((u) => !memberIds.has(u.id))
              .map((u) => (
                <li key={u.id} className="person">
                  <span className="person-name">
                    {userName(u, u.id)} <span className="muted">@{u.username}</span>
                  </span>
                  <button type="button" className="secondary" onClick={() => void store.addMembers(conv.id, [u.id])} aria-label={`Add ${u.username}`}>
                    Add
                  </button>
                </li>
              ))}
          </ul>
        </>
      )}
      {conv.type === 'group' && (
        <button
          type="button"
          className="danger"
          onClick={() => {
            onClose();
            void store.leave(conv.id);
          }}
        >
          Leave group
        </button>
      )}
    </Dialog>
  );
}
