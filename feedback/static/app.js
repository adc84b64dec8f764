// The annotation page. It talks only to the REST API and inserts every model text with
// textContent, so a response holding <script> or <img onerror> is shown, never run.
"use strict";

const state = {
  item: null,        // the item shown: {prompt_id, messages, candidates, mode, batch, answer}
  choices: new Map(), // candidate id -> {up: true|false|null, rank: number|null}; nothing is preset
  focus: 0,          // index of the focused response
  editing: null,     // id of the own answer being changed, or null for a new answer
  revision: null,    // the revision of that answer the edit is based on (the server refuses a stale one: 409)
  history: 0,        // how far back "My previous answer" went
  busy: false,
};

const $ = (id) => document.getElementById(id);

function clientIdFor(promptId) {
  // One id per item, kept across reloads: resending after a lost response is recorded once.
  const key = "rlhf-feedback-client-id-" + promptId;
  let id = sessionStorage.getItem(key);
  if (!id) {
    id = crypto.randomUUID();
    sessionStorage.setItem(key, id);
  }
  return id;
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function showProgress(progress) {
  if (progress) $("progress").textContent = `answered ${progress.answered} · ${progress.remaining} left`;
}

// -- rendering ---------------------------------------------------------------------------------

function renderPrompt(messages) {
  const box = $("prompt");
  box.replaceChildren();
  for (const message of messages) {
    const turn = el("div", { class: "turn " + message.role });
    turn.append(el("span", { class: "role" }, message.role), el("div", { class: "content" }, message.content));
    box.append(turn);
  }
}

function renderResponses() {
  const { item } = state;
  const list = $("responses");
  list.replaceChildren();
  item.candidates.forEach((candidate, index) => {
    const choice = state.choices.get(candidate.id);
    const card = el("li", { class: "response", tabindex: "0", "data-id": String(candidate.id) });
    card.classList.toggle("focused", index === state.focus);
    const head = el("div", { class: "head" });
    head.append(el("span", { class: "label" }, "Response " + (index + 1)));
    const controls = el("div", { class: "controls" });
    if (item.mode === "thumbs") {
      for (const [up, label, key] of [[true, "thumbs up", "1"], [false, "thumbs down", "2"]]) {
        const button = el("button", { type: "button", class: "thumb", "aria-pressed": String(choice.up === up) });
        button.append(document.createTextNode(label + " "), el("kbd", {}, key));
        button.addEventListener("click", (event) => { event.stopPropagation(); choose(index, key); });
        controls.append(button);
      }
    } else {
      controls.append(el("span", { class: "rank-label" }, "rank"));
      for (let rank = 1; rank <= item.candidates.length; rank++) {
        const button = el("button", { type: "button", class: "rank", "aria-pressed": String(choice.rank === rank) }, String(rank));
        button.addEventListener("click", (event) => { event.stopPropagation(); choose(index, String(rank)); });
        controls.append(button);
      }
    }
    head.append(controls);
    const edit = el("button", { type: "button", class: "edit", title: "copy into the corrected response" }, "edit as correction");
    edit.addEventListener("click", () => {
      $("correction").value = candidate.text;
      $("correction").dataset.candidateId = String(candidate.id);
      $("correction").focus();
    });
    head.append(edit);
    card.append(head, el("pre", { class: "text" }, candidate.text));
    card.addEventListener("click", () => { state.focus = index; highlight(); });
    list.append(card);
  });
  updateSubmit();
}

function highlight() {
  const cards = $("responses").children;
  for (let i = 0; i < cards.length; i++) cards[i].classList.toggle("focused", i === state.focus);
  if (cards[state.focus]) cards[state.focus].focus({ preventScroll: false });
}

function complete() {
  if (!state.item) return false;
  const values = [...state.choices.values()];
  return state.item.mode === "thumbs" ? values.every((c) => c.up !== null) : values.every((c) => c.rank !== null);
}

function updateSubmit() {
  $("submit").disabled = !complete() || state.busy;
  const missing = [...state.choices.values()].filter((c) => (state.item.mode === "thumbs" ? c.up : c.rank) === null).length;
  $("task").textContent = state.item.mode === "thumbs"
    ? (missing ? `Give each response a thumbs up or down (${missing} to go).` : "Ready: press Enter to submit.")
    : (missing ? `Rank every response, 1 = best; equal ranks are ties (${missing} to go).` : "Ready: press Enter to submit.");
}

function showItem(item, progress) {
  state.item = item;
  state.focus = 0;
  state.choices = new Map(item.candidates.map((c) => [c.id, { up: null, rank: null }]));
  const answer = item.answer;
  state.editing = answer ? answer.id : null;
  state.revision = answer ? answer.revision : null;
  if (answer) {
    for (const t of answer.thumbs) state.choices.get(t.candidate_id).up = t.up;
    for (const r of answer.ranking) state.choices.get(r.candidate_id).rank = r.rank;
  }
  $("comment").value = answer && answer.comment ? answer.comment : "";
  $("correction").value = answer && answer.correction ? answer.correction : "";
  $("correction").dataset.candidateId = answer && answer.corrected_candidate_id ? String(answer.corrected_candidate_id) : "";
  $("digit-help").textContent = item.mode === "thumbs"
    ? "1 thumbs up, 2 thumbs down"
    : `1–${item.candidates.length} set the rank`;
  // The round only: which selector chose the item, and why, would bias the judgement.
  const batched = item.batch !== null && item.batch !== undefined;
  $("batch").textContent = batched ? `Batch ${item.batch}` : "";
  show("batch", batched);
  renderPrompt(item.messages);
  renderResponses();
  showProgress(progress);
  show("done", false);
  show("annotate", true);
  setStatus(answer ? "Changing your earlier answer." : "");
  highlight();
}

// -- actions -----------------------------------------------------------------------------------

function choose(index, key) {
  const candidate = state.item.candidates[index];
  if (!candidate) return;
  const choice = state.choices.get(candidate.id);
  if (state.item.mode === "thumbs") {
    if (key !== "1" && key !== "2") return;
    choice.up = key === "1";
  } else {
    const rank = Number(key);
    if (!(rank >= 1 && rank <= state.item.candidates.length)) return;
    choice.rank = rank;
  }
  state.focus = Math.min(index + 1, state.item.candidates.length - 1);
  renderResponses();
  highlight();
}

function answerBody() {
  const thumbs = [];
  const ranking = [];
  for (const [id, choice] of state.choices) {
    if (state.item.mode === "thumbs") thumbs.push({ candidate_id: id, up: choice.up });
    else ranking.push({ candidate_id: id, rank: choice.rank });
  }
  const correction = $("correction").value.trim() ? $("correction").value : null;
  const corrected = $("correction").dataset.candidateId;
  return {
    thumbs,
    ranking,
    comment: $("comment").value.trim() ? $("comment").value : null,
    correction,
    corrected_candidate_id: correction && corrected ? Number(corrected) : null,
  };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Send with retries on network failure or 503; the same client id makes every retry safe.
async function send(method, path, body) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await api(method, path, body);
    } catch (e) {
      const retriable = !(e instanceof ApiError) || e.status === 503;
      if (!retriable || attempt >= 5) throw e;
      setStatus("Connection problem, retrying…", true);
      await sleep(500 * 2 ** attempt);
    }
  }
}

async function submit() {
  if (!complete() || state.busy) return;
  state.busy = true;
  updateSubmit();
  const item = state.item;
  try {
    if (state.editing) {
      await send("PUT", "/api/answers/" + encodeURIComponent(state.editing), { ...answerBody(), revision: state.revision });
    } else {
      await send("POST", "/api/answers", { client_id: clientIdFor(item.prompt_id), prompt_id: item.prompt_id, ...answerBody() });
    }
    sessionStorage.removeItem("rlhf-feedback-client-id-" + item.prompt_id);
    state.history = 0;
    setStatus("Saved.");
    await loadNext(); // auto-advance
  } catch (e) {
    setStatus(e instanceof ApiError ? e.message : "Could not reach the server; your answer is not saved yet.", true);
  } finally {
    state.busy = false;
    if (state.item) updateSubmit();
  }
}

async function skip() {
  if (!state.item || state.editing || state.busy) return;
  try {
    await send("POST", `/api/items/${state.item.prompt_id}/skip`);
    setStatus("Skipped.");
    await loadNext();
  } catch (e) {
    setStatus(e instanceof ApiError ? e.message : "Could not reach the server.", true);
  }
}

async function previous() {
  try {
    const { data } = await api("GET", `/api/answers?limit=1&offset=${state.history}`);
    if (!data.length) { setStatus("No earlier answer."); return; }
    state.history += 1;
    const { data: item } = await api("GET", "/api/items/" + data[0].prompt_id);
    showItem(item);
  } catch (e) {
    setStatus(e instanceof ApiError ? e.message : "Could not reach the server.", true);
  }
}

// Show the next item, or say why there is none. It never throws: it runs from a click handler and
// right after a save, where a rejection would go unhandled or, worse, reach submit()'s catch and
// tell the annotator "your answer is not saved yet" about an answer that was saved. An empty queue
// (item: null) and a failed fetch both hide the item panel, so no key or button acts on an item
// that is no longer current, and show the "Check again" panel saying which of the two it was.
async function loadNext() {
  let data;
  try {
    ({ data } = await send("GET", "/api/items/next"));
  } catch (e) {
    const reason = e instanceof ApiError ? e.message : "the server cannot be reached";
    showNone("Could not load the next item", `${reason}. Your saved answers are safe; check again in a moment.`);
    return;
  }
  showProgress(data.progress);
  if (!data.item) {
    showNone("Nothing left to annotate", "Every item you can answer has been answered. Thank you!");
    return;
  }
  showItem(data.item, data.progress);
}

function showNone(title, text) {
  state.item = null;
  state.editing = null;
  $("done-title").textContent = title;
  $("done-text").textContent = text;
  show("annotate", false);
  show("done", true);
}

function onKey(event) {
  if (!state.item || $("annotate").hidden) return;
  const typing = ["TEXTAREA", "INPUT"].includes(document.activeElement.tagName);
  if (typing) {
    if (event.key === "Escape") document.activeElement.blur();
    return; // keys type text in the comment and correction boxes
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const count = state.item.candidates.length;
  if (event.key === "ArrowDown" || event.key === "ArrowRight") {
    state.focus = Math.min(state.focus + 1, count - 1);
    highlight();
  } else if (event.key === "ArrowUp" || event.key === "ArrowLeft") {
    state.focus = Math.max(state.focus - 1, 0);
    highlight();
  } else if (/^[0-9]$/.test(event.key)) {
    choose(state.focus, event.key);
  } else if (event.key === "Enter") {
    submit();
  } else if (event.key === "Backspace") {
    skip();
  } else {
    return;
  }
  event.preventDefault();
}

async function onLogin(annotator, progress) {
  $("who").textContent = annotator.name + (annotator.role === "admin" ? " (admin)" : "");
  show("logout", true);
  showProgress(progress);
  try {
    const { data } = await api("GET", "/api/guidelines");
    // Server-rendered from markdown with raw HTML disabled (shown as text) and unsafe links
    // refused: the one place HTML from the server is inserted. Model output never is.
    $("guidelines").innerHTML = data.html;
  } catch (e) { /* the page works without guidelines */ }
  await loadNext();
}

document.addEventListener("DOMContentLoaded", () => {
  $("submit").addEventListener("click", submit);
  $("skip").addEventListener("click", skip);
  $("previous").addEventListener("click", previous);
  $("check-again").addEventListener("click", loadNext);
  document.addEventListener("keydown", onKey);
  start(onLogin);
});
