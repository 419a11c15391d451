import { useState, type FormEvent } from 'react';

import { store } from '../store.ts';
import { Tabs } from './Tabs.tsx';

type Mode = 'password' | 'code' | 'register';

export function AuthScreen() {
  const [mode, setMode] = useState<Mode>('password');
  return (
    <main className="auth">
      <h1>stompline</h1>
      <Tabs
        label="How to sign in"
        tabs={[
          ['password', 'Sign in'],
          ['code', 'Email code'],
          ['register', 'Register'],
        ]}
        value={mode}
        onChange={setMode}
      />
      {mode === 'password' && <PasswordForm />}
      {mode === 'code' && <CodeForm />}
      {mode === 'register' && <RegisterForm />}
    </main>
  );
}

function useSubmit(): [boolean, string | null, (f: () => Promise<void>) => (e: FormEvent) => void] {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const submit = (f: () => Promise<void>) => (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    f()
      .catch((err: unknown) => setError(err instanceof Error ? err.message : String(err)))
      .finally(() => setBusy(false));
  };
  return [busy, error, submit];
}

function PasswordForm() {
  const [login, setLogin] = useState('');
  const [password, setPassword] = useState('');
  const [busy, error, submit] = useSubmit();
  return (
    <form className="card" onSubmit={submit(() => store.signIn(login.trim(), password))} aria-label="Sign in">
      <label>
        Username or email
        <input name="login" autoComplete="username" value={login} onChange={(e) => setLogin(e.target.value)} required autoFocus />
      </label>
      <label>
        Password
        <input
          name="password"
          type="password"
          autoComplete="current-password"
          value={password}
          onChange={(e) => setPassword(e.target.value)}
          required
        />
      </label>
      <Submit error={error} busy={busy} label={busy ? 'Signing in…' : 'Sign in'} />
    </form>
  );
}

function CodeForm() {
  const [email, setEmail] = useState('');
  const [code, setCode] = useState('');
  const [sent, setSent] = useState(false);
  const [busy, error, submit] = useSubmit();
  if (!sent) {
    return (
      <form
        className="card"
        aria-label="Email code"
        onSubmit={submit(async () => {
          await store.requestCode(email.trim());
          setSent(true);
        })}
      >
        <label>
          Email
          <input name="email" type="email" autoComplete="email" value={email} onChange={(e) => setEmail(e.target.value)} required autoFocus />
        </label>
        <Submit error={error} busy={busy} label="Send me a code" />
      </form>
    );
  }
  return (
    <form className="card" aria-label="Enter code" onSubmit={submit(() => store.verifyCode(email.trim(), code.trim()))}>
      <p>If {email} can receive mail, a code is on its way.</p>
      <label>
        Code
        <input
          name="code"
          inputMode="numeric"
          autoComplete="one-time-code"
          value={code}
          onChange={(e) => setCode(e.target.value)}
          required
          autoFocus
        />
      </label>
      <Submit error={error} busy={busy} label="Sign in" />
      <button type="button" className="link" onClick={() => setSent(false)}>
        Use another address
      </button>
    </form>
  );
}

function RegisterForm() {
  const [username, setUsername] = useState('');
  const [displayName, setDisplayName] = useState('');
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const [busy, error, submit] = useSubmit();
  return (
    <form
      className="card"
      aria-label="Register"
      onSubmit={submit(() =>
        store.register({
          username: username.trim(),
          password,
          ...(email.trim() ? { email: email.trim() } : {}),
          ...(displayName.trim() ? { displayName: displayName.trim() } : {}),
        }),
      )}
    >
      <label>
        Username
        <input
          name="username"
          autoComplete="username"
          value={username}
          onChange={(e) => setUsername(e.target.value)}
          pattern="[A-Za-z0-9_.\-]{3,32}"
          title="3–32 letters, digits, _ . or -"
          required
          autoFocus
        />
      </label>
      <label>
        Display name <span className="hint">(optional)</span>
        <input name="displayName" value={displayName} onChange={(e) => setDisplayName(e.target.value)} />
      </label>
      <label>
        Email <span className="hint">(optional)</span>
        <input name="email" type="email" autoComplete="email" value={email} onChange={(e) => setEmail(e.target.value)} />
      </label>
      <label>
        Password <span className="hint">(at least 8 characters)</span>
        <input
          name="password"
          type="password"
          autoComplete="new-password"
          minLength={8}
          value={password}
          onChange={(e) => setPassword(e.target.value)}
          required
        />
      </label>
      <Submit error={error} busy={busy} label={busy ? 'Creating…' : 'Create account'} />
    </form>
  );
}

function Submit({ error, busy, label }: { error: string | null; busy: boolean; label: string }) {
  return (
    <>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
      <button type="submit" className="primary" disabled={busy}>
        {label}
      </button>
    </>
  );
}
