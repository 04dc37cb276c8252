// Calls to bursar's API with the signed-in token. The token goes only in the
// Authorization header: never in a URL, never in localStorage.

import type { Role, WhoAmI } from "./types";

/** A refusal of the API (its `error.code` and `error.message`), or a failure
 * to reach it (`NETWORK`). Shown to people as text. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

const ROLE_RANK: Record<Role, number> = { reader: 0, writer: 1, admin: 2 };

export function roleAtLeast(role: Role, needed: Role): boolean {
  return ROLE_RANK[role] >= ROLE_RANK[needed];
}

export type Query = Record<string, string | number | undefined>;

/** `/v1/users/{user}/courses/{course}` with both ids percent-encoded. */
export function enrollmentPath(userId: string, courseId?: string): string {
  const user = `/v1/users/${encodeURIComponent(userId)}/courses`;
  return courseId === undefined ? user : `${user}/${encodeURIComponent(courseId)}`;
}

function withQuery(path: string, query?: Query): string {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(query ?? {})) {
    if (value !== undefined && value !== "") search.set(name, String(value));
  }
  const text = search.toString();
  return text === "" ? path : `${path}?${text}`;
}

async function refusal(response: Response): Promise<ApiError> {
  let code = `HTTP_${response.status}`;
  let message = response.statusText || "the server refused the request";
  try {
    const body = await response.json();
    if (body && typeof body.error === "object" && body.error !== null) {
      code = String(body.error.code ?? code);
      message = String(body.error.message ?? message);
    }
  } catch {
    // Not JSON: keep the status line.
  }
  return new ApiError(response.status, code, message);
}

export class Api {
  constructor(
    private readonly token: string,
    /** Told when the token stops being accepted (401), so the page signs out. */
    private readonly onUnauthorized: (error: ApiError) => void = () => {},
  ) {}

  private async send(method: string, path: string, query?: Query, body?: unknown): Promise<Response> {
    const headers: Record<string, string> = { Authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response: Response;
    try {
      response = await fetch(withQuery(path, query), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "omit",
        referrerPolicy: "no-referrer",
      });
    } catch (error) {
      throw new ApiError(0, "NETWORK", `bursar could not be reached (${String(error)})`);
    }
    if (!response.ok) {
      const error = await refusal(response);
      if (response.status === 401) this.onUnauthorized(error);
      throw error;
    }
    return response;
  }

  async get<T>(path: string, query?: Query): Promise<T> {
    return (await this.send("GET", path, query)).json() as Promise<T>;
  }

  async post<T>(path: string, body: unknown = {}): Promise<T> {
    return (await this.send("POST", path, undefined, body)).json() as Promise<T>;
  }

  /** The body of a GET as a Blob, for a download. */
  async blob(path: string, query?: Query): Promise<Blob> {
    return (await this.send("GET", path, query)).blob();
  }

  whoami(): Promise<WhoAmI> {
    return this.get<WhoAmI>("/v1/whoami");
  }
}
