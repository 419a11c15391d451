import { useCallback, useEffect, useState, type FormEvent } from 'react';
import type { Message, User } from '@stompline/client';

import { conversationTitle, otherMember, store, useChat, userName } from '../store.ts';
import { Dialog, PresenceDot } from './Dialog.tsx';
import { Tabs } from './Tabs.tsx';

type Tab = 'chats' | 'people' | 'search';

export function Sidebar() {
  const [tab, setTab] = useState<Tab>('chats');
  const me = useChat((s) => s.me);
  return (
    <aside className="sidebar" aria-label="Conversations and people">
      <header className="sidebar-head">
        <strong title={me?.username}>{me ? userName(me, me.id) : ''}</strong>
        <button type="button" className="link" onClick={() => void store.signOut()}>
          Sign out
        </button>
      </header>
      <Tabs
        label="Sidebar"
        tabs={[
          ['chats', 'Chats'],
          ['people', 'People'],
          ['search', 'Search'],
        ]}
        value={tab}
        onChange={setTab}
      />
      {tab === 'chats' && <ConversationList />}
      {tab === 'people' && <People onOpened={() => setTab('chats')} />}
      {tab === 'search' && <MessageSearch />}
    </aside>
  );
}

function ConversationList() {
  const conversations = useChat((s) => s.conversations);
  const users = useChat((s) => s.users);
  const me = useChat((s) => s.me);
  const presence = useChat((s) => s.presence);
  const selected = useChat((s) => s.selected);
  const typing = useChat((s) => s.typing);
  const [creating, setCreating] = useState(false);
  return (
    <div className="panel">
      <button type="button" className="secondary wide" onClick={() => setCreating(true)}>
        New group
      </button>
      {conversations.length === 0 && <p className="muted">No conversations yet.</p>}
      <ul className="conversations" aria-label="Conversation list">
        {conversations.map((c) => {
          const title = conversationTitle(c, { users, me });
          const other = otherMember(c, me?.id);
          const someoneTyping = Object.keys(typing[c.id] ?? {}).length > 0;
          const last = c.lastMessage;
          const preview = someoneTyping
            ? 'typing…'
            : last
              ? last.deletedAt
                ? 'message deleted'
                : `${last.senderId === me?.id ? 'You: ' : ''}${last.body}`
              : 'No messages yet';
          return (
            <li key={c.id}>
              <button
                type="button"
                className={`conversation ${selected === c.id ? 'selected' : ''}`}
                aria-current={selected === c.id ? 'true' : undefined}
                data-testid={`conversation-${c.id}`}
                onClick={() => store.select(c.id)}
              >
                <span className="avatar" aria-hidden="true">
                  {title.slice(0, 1).toUpperCase()}
                  {other && <PresenceDot status={presence[other]} />}
                </span>
                <span className="conv-text">
                  <span className="conv-title">{title}</span>
                  <span className="conv-preview">{preview}</span>
                </span>
                {c.unreadCount > 0 && (
                  <span className="badge" aria-label={`${c.unreadCount} unread`} data-testid="unread-badge">
                    {c.unreadCount}
                  </span>
                )}
              </button>
            </li>
          );
        })}
      </ul>
      {creating && <NewGroup onClose={() => setCreating(false)} />}
    </div>
  );
}

/** Searching users as the query changes (debounced). */
function useUserSearch(query: string): User[] {
  const [results, setResults] = useState<User[]>([]);
  useEffect(() => {
    if (!query.trim()) {
      setResults([]);
      return;
    }
    const t = setTimeout(() => {
      store.searchUsers(query).then(setResults, () => setResults([]));
    }, 200);
    return () => clearTimeout(t);
  }, [query]);
  return results;
}

function NewGroup({ onClose }: { onClose: () => void }) {
  const [name, setName] = useState('');
  const [query, setQuery] = useState('');
  const [picked, setPicked] = useState<string[]>([]);
  const contacts = useChat((s) => s.contacts);
  const users = useChat((s) => s.users);
  const found = useUserSearch(query);
  const candidates = [...new Set([...found.map((u) => u.id), ...contacts])];
  const toggle = (id: string) => setPicked((p) => (p.includes(id) ? p.filter((x) => x !== id) : [...p, id]));
  const submit = (e: FormEvent) => {
    e.preventDefault();
    store.createGroup(name.trim(), picked).then(onClose, () => {});
  };
  const close = useCallback(onClose, [onClose]);
  return (
    <Dialog title="New group" onClose={close}>
      <form onSubmit={submit} className="stack">
        <label>
          Group name
          <input name="groupName" value={name} onChange={(e) => setName(e.target.value)} required maxLength={100} />
        </label>
        <label>
          Find people
          <input name="memberQuery" type="search" value={query} onChange={(e) => setQuery(e.target.value)} />
        </label>
        <fieldset>
          <legend>Members</legend>
          {candidates.length === 0 && <p className="muted">Search for people to add.</p>}
          {candidates.map((id) => (
            <label key={id} className="check">
              <input type="checkbox" checked={picked.includes(id)} onChange={() => toggle(id)} />
              {userName(users[id], id)} <span className="muted">@{users[id]?.username}</span>
            </label>
          ))}
        </fieldset>
        <button type="submit" className="primary" disabled={!name.trim()}>
          Create group
        </button>
      </form>
    </Dialog>
  );
}

function People({ onOpened }: { onOpened: () => void }) {
  const [query, setQuery] = useState('');
  const found = useUserSearch(query);
  const contacts = useChat((s) => s.contacts);
  const users = useChat((s) => s.users);
  const presence = useChat((s) => s.presence);
  const open = (id: string) => void store.openDirect(id).then(onOpened, () => {});
  const row = (u: User, isContact: boolean) => (
    <li key={u.id} className="person">
      <PresenceDot status={presence[u.id]} />
      <span className="person-name">
        {userName(u, u.id)} <span className="muted">@{u.username}</span>
      </span>
      <button type="button" className="secondary" onClick={() => open(u.id)} aria-label={`Message ${u.username}`}>
        Message
      </button>
      {isContact ? (
        <button type="button" className="link" onClick={() => void store.removeContact(u.id)} aria-label={`Remove ${u.username} from contacts`}>
          Remove
        </button>
      ) : (
        <button type="button" className="link" onClick={() => void store.addContact(u.id)} aria-label={`Add ${u.username} to contacts`}>
          Add
        </button>
      )}
    </li>
  );
  return (
    <div className="panel">
      <label>
        Find people
        <input type="search" name="userQuery" value={query} onChange={(e) => setQuery(e.target.value)} placeholder="username or name" />
      </label>
      {query.trim() && (
        <ul className="people" aria-label="Search results">
          {found.length === 0 && <li className="muted">Nobody found.</li>}
          {found.map((u) => row(u, contacts.includes(u.id)))}
        </ul>
      )}
      <h3>Contacts</h3>
      <ul className="people" aria-label="Contacts">
        {contacts.length === 0 && <li className="muted">No contacts yet.</li>}
        {contacts.map((id) => {
          const u = users[id];
          return u ? row(u, true) : null;
        })}
      </ul>
    </div>
  );
}

function MessageSearch() {
  const [q, setQ] = useState('');
  const [results, setResults] = useState<Message[] | null>(null);
  const conversations = useChat((s) => s.conversations);
  const users = useChat((s) => s.users);
  const me = useChat((s) => s.me);
  const submit = (e: FormEvent) => {
    e.preventDefault();
    store.searchMessages(q).then(setResults, (err: unknown) => store.flash(err));
  };
  return (
    <div className="panel">
      <form onSubmit={submit} role="search">
        <label>
          Search messages
          <input type="search" name="messageQuery" value={q} onChange={(e) => setQ(e.target.value)} />
        </label>
      </form>
      {results && (
        <ul className="results" aria-label="Message search results">
          {results.length === 0 && <li className="muted">No messages found.</li>}
          {results.map((m) => {
            const conv = conversations.find((c) => c.id === m.conversationId);
            return (
              <li key={m.id}>
                <button type="button" className="result" onClick={() => store.select(m.conversationId)}>
                  <span className="muted">
                    {conv ? conversationTitle(conv, { users, me }) : 'conversation'} · {userName(users[m.senderId], m.senderId)}
                  </span>
                  <span>{m.body}</span>
                </button>
              </li>
            );
          })}
        </ul>
      )}
    </div>
  );
}
