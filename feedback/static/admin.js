// The admin page: progress, agreement, settings, import, annotators, export, sync status.
// Like the annotation page it uses only the REST API and inserts text with textContent.
"use strict";

const $ = (id) => document.getElementById(id);

function fillTable(id, rows) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren(...rows.map((cells) => {
    const tr = el("tr");
    for (const cell of cells) tr.append(el("td", {}, cell === null || cell === undefined ? "n/a" : String(cell)));
    return tr;
  }));
}

function report(error) {
  $("admin-status").textContent = error instanceof ApiError ? error.message : "cannot reach the server";
}

async function refresh() {
  try {
    const [{ data: progress }, { data: agreement }, { data: settings }, { data: annotators }, { data: sync }] = await Promise.all([
      api("GET", "/api/admin/progress"),
      api("GET", "/api/admin/agreement"),
      api("GET", "/api/admin/settings"),
      api("GET", "/api/admin/annotators"),
      api("GET", "/api/admin/sync"),
    ]);
    $("progress-summary").textContent =
      `${progress.items} items · ${progress.complete} complete (${progress.overlap} annotator(s) each) · ` +
      `${progress.in_progress} in progress · ${progress.untouched} untouched · ${progress.answers} answers`;
    fillTable("progress-table", progress.annotators.map((a) => [a.name, a.role, a.answers, a.skipped]));
    // Per round of iterated RLHF; a store that never had rounds shows no such table.
    show("rounds", progress.batches.some((b) => b.batch !== null));
    fillTable("rounds-table", progress.batches.map((b) => [
      b.batch === null ? "no round" : b.batch, b.selected_by, b.items, b.complete, b.answers,
      b.mean_selection_score === null ? null : b.mean_selection_score.toFixed(3),
    ]));
    fillTable("agreement-table", agreement.map((q) => [
      q.question, q.level, q.units, q.annotators,
      q.alpha === null ? null : q.alpha.toFixed(3),
      q.percent_agreement === null ? null : (100 * q.percent_agreement).toFixed(1) + "%",
    ]));
    const form = $("settings-form");
    form.elements["overlap"].value = settings.overlap;
    form.elements["mode"].value = settings.mode;
    form.elements["guidelines"].value = settings.guidelines;
    fillTable("annotators-table", annotators.map((a) => [a.name, a.role, a.active ? "yes" : "no"]));
    $("sync-status").textContent =
      `${sync.synced} sent · ${sync.pending} waiting · ${sync.failing} failing` + (sync.last_error ? ` · last error: ${sync.last_error}` : "");
  } catch (e) {
    report(e);
  }
}

function parseJsonl(text) {
  return text.split("\n").map((line, i) => [line.trim(), i + 1]).filter(([line]) => line).map(([line, number]) => {
    try { return JSON.parse(line); } catch (e) { throw new ApiError(400, `line ${number}: not valid JSON`); }
  });
}

async function onLogin(annotator) {
  $("who").textContent = annotator.name;
  show("logout", true);
  if (annotator.role !== "admin") {
    show("admin", true);
    $("admin-status").textContent = "This page needs the admin role.";
    return;
  }
  show("admin", true);
  await refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("settings-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    try {
      await api("PUT", "/api/admin/settings", {
        overlap: Number(form.elements["overlap"].value),
        mode: form.elements["mode"].value,
        guidelines: form.elements["guidelines"].value,
      });
      await refresh();
    } catch (e) { report(e); }
  });
  $("import-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const rows = parseJsonl(event.target.elements["jsonl"].value);
      const { data } = await api("POST", "/api/admin/import", { rows });
      $("import-result").textContent =
        `${data.prompts_added} new prompts, ${data.candidates_added} new responses (${data.prompts_existing} prompts already there)`;
      await refresh();
    } catch (e) { report(e); }
  });
  $("annotator-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const body = { name: form.elements["name"].value, role: form.elements["role"].value };
    if (form.elements["password"].value) body.password = form.elements["password"].value;
    try {
      const { data } = await api("POST", "/api/admin/annotators", body);
      $("new-token").textContent = `Token for ${data.name} (shown once): ${data.token}`;
      form.reset();
      await refresh();
    } catch (e) { report(e); }
  });
  $("export-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const params = new URLSearchParams(new FormData(event.target));
    try {
      const { data } = await api("GET", "/api/admin/export?" + params.toString());
      const link = el("a", { href: URL.createObjectURL(data), download: `feedback-${params.get("format")}.zip` });
      document.body.append(link);
      link.click();
      link.remove();
    } catch (e) { report(e); }
  });
  start(onLogin);
});
