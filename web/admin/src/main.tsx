// The admin page: sign in with a token, then look at enrollments and, with
// an admin token, clear intake exceptions, replay webhooks, run the audit and
// export the ledger. The token is kept in this tab's sessionStorage (gone
// when the tab closes) and sent only in the Authorization header.

import { render } from "preact";
import { useEffect, useMemo, useState } from "preact/hooks";
import { Api, ApiError } from "./api";
import { ErrorMessage, Field, Time, type Session } from "./common";
import type { WhoAmI } from "./types";
import { EnrollmentsView } from "./views/enrollments";
import { EnrollmentView } from "./views/enrollment";
import { ExceptionsView } from "./views/exceptions";
import { WebhooksView } from "./views/webhooks";
import { AuditView } from "./views/audit";
import { ExportView } from "./views/export";
import "./style.css";

const TOKEN_KEY = "bursar.admin.token";

/** Where the page is: the part of the URL after `#`. It holds view names and
 * enrollment ids, never the token. */
type Route =
  | { view: "enrollments"; userId: string | null }
  | { view: "enrollment"; userId: string; courseId: string }
  | { view: "exceptions" | "webhooks" | "audit" | "export" };

function parseRoute(hash: string): Route {
  const parts = hash.replace(/^#\/?/, "").split("/").map((part) => {
    try {
      return decodeURIComponent(part);
    } catch {
      return part;
    }
  });
  switch (parts[0]) {
    case "exceptions":
    case "webhooks":
    case "audit":
    case "export":
      return { view: parts[0] };
    case "enrollments":
      if (parts.length >= 3 && parts[1] && parts[2]) {
        return { view: "enrollment", userId: parts[1], courseId: parts[2] };
      }
      return { view: "enrollments", userId: parts[1] || null };
    default:
      return { view: "enrollments", userId: null };
  }
}

function useRoute(): Route {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const changed = () => setHash(location.hash);
    addEventListener("hashchange", changed);
    return () => removeEventListener("hashchange", changed);
  }, []);
  return parseRoute(hash);
}

function SignIn({ onSignedIn, notice }: { onSignedIn: (token: string, whoami: WhoAmI) => void; notice: string | null }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (event: Event) => {
    event.preventDefault();
    const secret = token.trim();
    if (secret === "") {
      setError(new Error("Paste an API token first."));
      return;
    }
    setBusy(true);
    try {
      const whoami = await new Api(secret).whoami();
      setToken("");
      onSignedIn(secret, whoami);
    } catch (failure) {
      setError(failure);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="sign-in">
      <h1>bursar admin</h1>
      <p>
        Sign in with a bursar API token. The page acts only as that token's role: a reader token looks, a writer token
        looks, an admin token also clears intake exceptions, replays webhooks, runs the audit and exports.
      </p>
      {notice && (
        <p class="notice" role="status">
          {notice}
        </p>
      )}
      <form onSubmit={submit}>
        <Field label="API token" id="token">
          <input
            id="token"
            type="password"
            autoComplete="off"
            spellcheck={false}
            value={token}
            onInput={(event) => setToken(event.currentTarget.value)}
          />
        </Field>
        <button type="submit" disabled={busy}>
          Sign in
        </button>
      </form>
      <ErrorMessage error={error} />
      <p class="hint">The token stays in this tab only (sessionStorage) and is sent only in the Authorization header.</p>
    </main>
  );
}

const NAV: { view: Route["view"]; label: string; hash: string }[] = [
  { view: "enrollments", label: "Enrollments", hash: "#/enrollments" },
  { view: "exceptions", label: "Intake exceptions", hash: "#/exceptions" },
  { view: "webhooks", label: "Webhooks", hash: "#/webhooks" },
  { view: "audit", label: "Audit", hash: "#/audit" },
  { view: "export", label: "Export", hash: "#/export" },
];

function App() {
  const [token, setToken] = useState<string | null>(() => sessionStorage.getItem(TOKEN_KEY));
  const [whoami, setWhoami] = useState<WhoAmI | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [restoring, setRestoring] = useState(token !== null);
  const route = useRoute();

  const signOut = (why: string | null) => {
    sessionStorage.removeItem(TOKEN_KEY);
    setToken(null);
    setWhoami(null);
    setNotice(why);
  };

  const api = useMemo(
    () =>
      token === null
        ? null
        : new Api(token, (error: ApiError) => signOut(`Signed out: the server no longer accepts the token (${error.message}).`)),
    [token],
  );

  // A token kept from earlier in this tab: ask who it is before showing anything.
  useEffect(() => {
    if (api === null || whoami !== null) return;
    api.whoami().then(
      (answer) => {
        setWhoami(answer);
        setRestoring(false);
      },
      () => {
        setRestoring(false);
        signOut(null);
      },
    );
  }, [api]);

  if (api === null || whoami === null) {
    if (restoring) return <p class="loading">Signing in…</p>;
    return (
      <SignIn
        notice={notice}
        onSignedIn={(secret, answer) => {
          sessionStorage.setItem(TOKEN_KEY, secret);
          setNotice(null);
          setToken(secret);
          setWhoami(answer);
        }}
      />
    );
  }

  const session: Session = { api, role: whoami.role };
  const current = route.view === "enrollment" ? "enrollments" : route.view;
  return (
    <>
      <header class="top">
        <span class="brand">bursar admin</span>
        <nav aria-label="Sections">
          <ul>
            {NAV.map((item) => (
              <li key={item.view}>
                <a href={item.hash} aria-current={current === item.view ? "page" : undefined}>
                  {item.label}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <div class="who" data-testid="who">
          <span>
            Role: <strong data-testid="role">{whoami.role}</strong>
          </span>
          <span class="token-id">
            {whoami.token_id === null ? "configured admin token" : whoami.token_id}
            {whoami.expires_at && (
              <>
                {", expires "}
                <Time value={whoami.expires_at} />
              </>
            )}
          </span>
          <button type="button" class="secondary" onClick={() => signOut("Signed out.")}>
            Sign out
          </button>
        </div>
      </header>
      <main id="main">
        {route.view === "enrollments" && <EnrollmentsView session={session} userId={route.userId} />}
        {route.view === "enrollment" && (
          <EnrollmentView session={session} userId={route.userId} courseId={route.courseId} />
        )}
        {route.view === "exceptions" && <ExceptionsView session={session} />}
        {route.view === "webhooks" && <WebhooksView session={session} />}
        {route.view === "audit" && <AuditView session={session} />}
        {route.view === "export" && <ExportView session={session} />}
      </main>
    </>
  );
}

const root = document.getElementById("app");
if (root) render(<App />, root);
