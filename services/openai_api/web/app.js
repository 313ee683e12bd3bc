// The Ask page: questions answered from the indexed documents, streamed with their sources
// (POST /v1/rag/completions, server-sent events), and the document collection (/v1/documents).
// Plain browser JavaScript, no build step. The API key lives in sessionStorage only.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "meshllm.apiKey";

// ------------------------------------------------------------------ the API key and errors

$("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
$("api-key").addEventListener("input", () => sessionStorage.setItem(KEY_STORE, $("api-key").value));

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// What a person should read for an error the server sent (OpenAI's {"error": {...}} shape).
function explain(status, error) {
  const message = (error && error.message) || `the server answered ${status}`;
  if (status === 401) return `The API key is missing or wrong. Enter the key this mesh was started with (${message}).`;
  if (status === 403) return `This API key may not do that (${message}).`;
  if (status === 404 && error && error.code === "document_not_found") return "That document is already gone.";
  if (status === 404) return `Not found: ${message}. Is the Retrieval service configured for this gateway?`;
  if (status === 413) return `That is too large to send in one request (${message}).`;
  if (status === 429) return `The mesh is busy; try again in a moment (${message}).`;
  if (status === 503) return `The mesh is not ready yet (a service is starting or unreachable): ${message}`;
  if (status >= 500) return `The server failed: ${message}`;
  return `The request was refused: ${message}`;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

async function call(method, path, body) {
  let response;
  try {
    response = await fetch(path, { method, headers: headers(), body: body ? JSON.stringify(body) : undefined });
  } catch (e) {
    throw new Error(`The gateway cannot be reached (${e.message}).`);
  }
  if (!response.ok) {
    let error = null;
    try { error = (await response.json()).error; } catch (_) { /* not JSON */ }
    throw new Error(explain(response.status, error));
  }
  return response;
}

async function health() {
  try {
    const h = await (await fetch("/health")).json();
    $("health").textContent = h.status === "SERVING" ? "serving" : "not ready";
    $("health").className = `health ${h.status === "SERVING" ? "ok" : "down"}`;
  } catch (_) {
    $("health").textContent = "unreachable";
    $("health").className = "health down";
  }
}
health();
setInterval(health, 10000);

// ------------------------------------------------------------------ tabs

for (const tab of document.querySelectorAll("[role=tab]")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll("[role=tab]")) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      $(t.getAttribute("aria-controls")).hidden = !on;
    }
    if (tab.id === "tab-docs") loadDocuments(true);
  });
}

// ------------------------------------------------------------------ Ask

let sources = new Map();            // citation number -> citation

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function renderAnswer(text) {
  // [n] (or [n, m]) of a source given to the model becomes a link that highlights that source
  $("answer").innerHTML = escapeHtml(text).replace(/\[(\d+(?:\s*,\s*\d+)*)\]/g, (whole, list) => {
    const numbers = list.split(",").map((n) => Number(n.trim()));
    if (!numbers.every((n) => sources.has(n))) return whole;
    return "[" + numbers.map((n) => `<a href="#src-${n}" class="cite" data-n="${n}">${n}</a>`).join(", ") + "]";
  });
}

function renderSources(citations) {
  sources = new Map(citations.map((c) => [c.number, c]));
  $("sources").innerHTML = "";
  for (const c of citations) {
    const li = document.createElement("li");
    li.id = `src-${c.number}`;
    li.value = c.number;
    li.className = c.cited ? "cited" : "";
    li.innerHTML = `<div class="meta">${escapeHtml(c.source || c.document_id)} · score ${c.score.toFixed(3)}` +
                   `${c.cited ? " · cited" : ""}</div><div class="snippet">${escapeHtml(c.snippet)}</div>`;
    $("sources").appendChild(li);
  }
}

$("answer").addEventListener("click", (event) => {
  const link = event.target.closest("a.cite");
  if (!link) return;
  event.preventDefault();
  for (const li of document.querySelectorAll(".sources li")) li.classList.remove("highlight");
  const target = $(`src-${link.dataset.n}`);
  target.classList.add("highlight");
  target.scrollIntoView({ block: "nearest" });
});

// Server-sent events of a fetch response, one parsed `data:` payload at a time ("[DONE]" as is).
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ")) {
          const data = line.slice(6);
          yield data === "[DONE]" ? data : JSON.parse(data);
        }
      }
    }
  }
}

$("ask-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  showError("");
  $("ask-button").disabled = true;
  $("no-source").hidden = true;
  renderSources([]);
  delete $("answer-box").dataset.done;
  let text = "";
  renderAnswer(text);
  try {
    const response = await call("POST", "/v1/rag/completions", { query: question, stream: true, max_tokens: 256 });
    for await (const chunk of events(response)) {
      if (chunk === "[DONE]") break;
      if (chunk.error) throw new Error(explain(500, chunk.error));
      if (chunk.citations) renderSources(chunk.citations);
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.delta && choice.delta.content) {
        text += choice.delta.content;
        renderAnswer(text);
      }
      if (choice && choice.finish_reason && !chunk.answered_from_sources) $("no-source").hidden = false;
    }
    renderAnswer(text);
    // the sources the service attributed the answer to, as links, when the answer has no [n] itself
    const cited = [...sources.values()].filter((c) => c.cited).map((c) => c.number);
    if (cited.length && !$("answer").querySelector("a.cite")) {
      const line = document.createElement("div");
      line.className = "cited-line";
      line.innerHTML = "Sources: " + cited.map((n) => `<a href="#src-${n}" class="cite" data-n="${n}">[${n}]</a>`)
        .join(" ");
      $("answer").appendChild(line);
    }
    $("answer-box").dataset.done = "true";
  } catch (e) {
    showError(e.message);
  } finally {
    $("ask-button").disabled = false;
  }
});

// ------------------------------------------------------------------ Documents

let nextAfter = null;

async function loadDocuments(fresh) {
  try {
    if (fresh) {
      nextAfter = null;
      document.querySelector("#documents tbody").innerHTML = "";
    }
    const query = new URLSearchParams({ limit: "50" });
    if (nextAfter) query.set("after", nextAfter);
    const page = await (await call("GET", `/v1/documents?${query}`)).json();
    $("doc-total").textContent = `(${page.total})`;
    for (const d of page.data) {
      const row = document.createElement("tr");
      row.dataset.id = d.id;
      const when = d.ingested_at ? new Date(d.ingested_at * 1000).toLocaleString() : "";
      row.innerHTML = `<td>${escapeHtml(d.id)}</td><td>${escapeHtml(d.source)}</td><td>${d.chunks}</td>` +
                      `<td>${escapeHtml(when)}</td><td><button class="delete">Delete</button></td>`;
      row.querySelector(".delete").addEventListener("click", () => deleteDocument(d.id, row));
      document.querySelector("#documents tbody").appendChild(row);
    }
    nextAfter = page.next_after;
    $("more-docs").hidden = !nextAfter;
  } catch (e) {
    showError(e.message);
  }
}
$("more-docs").addEventListener("click", () => loadDocuments(false));

async function deleteDocument(id, row) {
  if (!confirm(`Delete ${id}?`)) return;
  try {
    await call("DELETE", `/v1/documents/${encodeURIComponent(id)}`);
    row.remove();
    loadDocuments(true);
  } catch (e) {
    showError(e.message);
  }
}

$("ingest-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  const documents = [];
  for (const file of $("files").files) documents.push({ id: file.name, source: file.name, text: await file.text() });
  const pasted = $("doc-text").value;
  if (pasted.trim()) {
    const id = $("doc-id").value.trim() || `pasted-${new Date().toISOString()}`;
    documents.push({ id, source: $("doc-source").value.trim() || id, text: pasted });
  }
  if (!documents.length) {
    showError("Choose files or paste a document first.");
    return;
  }
  $("ingest-button").disabled = true;
  const progress = $("ingest-progress");
  progress.hidden = false;
  progress.max = documents.length;
  progress.value = 0;
  $("ingest-results").innerHTML = "";
  for (const doc of documents) {               // one request each: progress, and one bad file fails alone
    const li = document.createElement("li");
    li.textContent = `${doc.id}: …`;
    $("ingest-results").appendChild(li);
    try {
      const reply = await (await call("POST", "/v1/documents", { documents: [doc] })).json();
      const r = reply.data[0];
      li.className = `status-${r.status}`;
      li.textContent = `${r.id}: ${r.status}` + (r.status === "duplicate" ? ` of ${r.duplicate_of}` : "") +
                       (r.chunks ? ` (${r.chunks} chunks)` : "");
    } catch (e) {
      li.className = "status-failed";
      li.textContent = `${doc.id}: failed — ${e.message}`;
    }
    progress.value += 1;
    $("ingest-count").textContent = `${progress.value} / ${documents.length}`;
  }
  $("ingest-button").disabled = false;
  $("doc-text").value = "";
  $("files").value = "";
  loadDocuments(true);
});
