// The web role's API: same origin only, the session cookie is HttpOnly and
// sent by the browser; every change carries the CSRF token from sign-in.
export interface Me {
  user: string; role: 'user' | 'admin' | 'superadmin'; domains: string[];
  totp: boolean; must_enroll: boolean; csrf?: string;
}

export class ApiError extends Error {
  constructor(public status: number, public code: string, message: string) { super(message); }
}

let csrf = '';
export function setCsrf(token: string | undefined): void { csrf = token || ''; }

export async function api<T = any>(method: string, path: string, body?: unknown,
                                   params?: Record<string, string | number | undefined>): Promise<T> {
  let url = '/api/v1' + path;
  if (params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params))
      if (v !== undefined && v !== '') q.set(k, String(v));
    const s = q.toString();
    if (s) url += '?' + s;
  }
  const headers: Record<string, string> = { 'Accept': 'application/json' };
  if (method !== 'GET') {
    headers['Content-Type'] = 'application/json';
    headers['X-CSRF-Token'] = csrf;
  }
  const r = await fetch(url, {
    method, headers, credentials: 'same-origin', cache: 'no-store', redirect: 'error',
    body: method === 'GET' ? undefined : JSON.stringify(body ?? {}),
  });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new ApiError(r.status, data.error || 'error', data.message || r.statusText);
  return data as T;
}
