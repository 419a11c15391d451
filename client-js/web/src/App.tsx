import { AuthScreen } from './components/AuthScreen.tsx';
import { ChatPanel } from './components/ChatPanel.tsx';
import { Sidebar } from './components/Sidebar.tsx';
import { store, useChat } from './store.ts';

export function App() {
  const phase = useChat((s) => s.phase);
  const notice = useChat((s) => s.notice);
  if (phase === 'starting') {
    return (
      <main className="splash" aria-busy="true">
        Loading…
      </main>
    );
  }
  return (
    <>
      {notice && (
        <div className="notice" role="alert">
          <span>{notice}</span>
          <button type="button" className="link" onClick={() => store.dismissNotice()} aria-label="Dismiss">
            ✕
          </button>
        </div>
      )}
      {phase === 'signedOut' ? <AuthScreen /> : <ChatScreen />}
    </>
  );
}

function ChatScreen() {
  const selected = useChat((s) => s.selected);
  return (
    <div className={`layout ${selected ? 'has-selection' : ''}`}>
      <OfflineBanner />
      <Sidebar />
      <main className="main" aria-label="Conversation">
        {selected ? (
          <ChatPanel key={selected} cid={selected} />
        ) : (
          <div className="empty-main">
            <p>Pick a conversation, or find people under “People” to start one.</p>
          </div>
        )}
      </main>
    </div>
  );
}

function OfflineBanner() {
  const connection = useChat((s) => s.connection);
  const online = useChat((s) => s.online);
  if (connection === 'connected' || connection === 'idle') return null;
  return (
    <div className="offline" role="status" data-testid="offline-banner">
      {online ? 'Connection lost. Reconnecting…' : 'You are offline. Messages you send will go out when you are back.'}
      <button type="button" className="link" onClick={() => store.reconnectNow()}>
        Retry now
      </button>
    </div>
  );
}
