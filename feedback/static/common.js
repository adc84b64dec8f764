// Shared by the annotation and admin pages: the session token, API calls, login.
// No innerHTML anywhere for data: every text from the server goes in with textContent.
"use strict";

const TOKEN_KEY = "rlhf-feedback-token";

const session = {
  get token() { return sessionStorage.getItem(TOKEN_KEY); },
  set token(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
  },
};

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

// fetch + JSON + bearer token. Network failures reject with a TypeError (callers may retry);
// HTTP errors reject with an ApiError carrying the server's message.
async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (session.token) headers["Authorization"] = "Bearer " + session.token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const type = response.headers.get("Content-Type") || "";
  const payload = type.includes("application/json") ? await response.json() : await response.blob();
  if (!response.ok) {
    const detail = payload && payload.detail ? payload.detail : "HTTP " + response.status;
    throw new ApiError(response.status, detail);
  }
  return { status: response.status, data: payload };
}

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function show(id, visible) { document.getElementById(id).hidden = !visible; }

// Wire the login form; `onLogin(annotator)` runs once a token works.
function setupLogin(onLogin) {
  const form = document.getElementById("login-form");
  const error = document.getElementById("login-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const name = form.elements["name"].value.trim();
    const password = form.elements["password"].value;
    const token = form.elements["token"].value.trim();
    const body = token ? { token } : { name, password };
    try {
      const { data } = await api("POST", "/api/login", body);
      session.token = data.token;
      form.reset();
      show("login", false);
      onLogin(data.annotator);
    } catch (e) {
      error.textContent = e instanceof ApiError ? e.message : "cannot reach the server";
    }
  });
  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("POST", "/api/logout"); } catch (e) { /* the token is dropped either way */ }
    session.token = null;
    location.reload();
  });
}

// Check the stored token; show the login form when there is none or it no longer works.
async function start(onLogin) {
  setupLogin(onLogin);
  if (session.token) {
    try {
      const { data } = await api("GET", "/api/me");
      onLogin(data.annotator, data.progress);
      return;
    } catch (e) {
      session.token = null;
    }
  }
  show("login", true);
  document.getElementById("login-name").focus();
}
