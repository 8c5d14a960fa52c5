// aop annotate: one instance at a time, every key press saved by the server at once.
// Plain JavaScript, no build step, nothing fetched from outside this server.
"use strict";

const $ = (id) => document.getElementById(id);
const clientId = (() => {
  let id = sessionStorage.getItem("aop-client");
  if (!id) {
    const bytes = new Uint8Array(9);
    crypto.getRandomValues(bytes);
    id = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem("aop-client", id);
  }
  return id;
})();

let state = null;      // classes, counts, progress (from the server)
let item = null;       // the instance shown
let trail = [];        // instances shown on this page, for browsing back and forth
let at = -1;           // position of `item` in `trail`
let z = 0;
let zoom = 1;
let queue = Promise.resolve();   // key presses are handled one after another, in order
let pressedAt = null;            // time of the key press that asked for the next picture
const timings = [];              // milliseconds from key press to the next picture shown
window.aopTimings = timings;
window.aopIdle = () => queue;

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

const key = (it) => `${encodeURIComponent(it.volume)}/${it.label}`;
const pictureUrl = (it, zz) => `/api/image/${key(it)}.png` + (zz === undefined ? "" : `?z=${zz}`);
const sameItem = (a, b) => a && b && a.volume === b.volume && a.label === b.label;

function say(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function drawState() {
  if (!state) return;
  $("dataset").textContent = state.dataset;
  $("annotator").textContent = state.annotator || "(none)";
  $("order").textContent = state.order;
  $("bar-done").style.width = `${(100 * state.done) / Math.max(1, state.total)}%`;
  const parts = state.classes.map((c) => `${c.name} ${c.count}`);
  parts.push(`bad segmentation ${state.bad_segmentation}`);
  $("progress-text").textContent = `${state.done} / ${state.total} done · ${parts.join(" · ")}`;
  const list = $("classes");
  list.replaceChildren();
  const rows = state.classes.map((c) => [c.key, c.name, c.count]);
  rows.push(["x", "bad_segmentation", state.bad_segmentation]);
  for (const [k, name, count] of rows) {
    const li = document.createElement("li");
    li.dataset.class = name;
    if (item && item.class === name) li.classList.add("current");
    const kbd = document.createElement("kbd");
    kbd.textContent = k;
    const label = document.createElement("span");
    label.textContent = name.replace("_", " ");
    const n = document.createElement("span");
    n.className = "count";
    n.textContent = count;
    li.append(kbd, label, n);
    list.append(li);
  }
}

function drawItem() {
  const box = $("instance");
  if (!item) {
    box.dataset.key = "";
    $("instance-key").textContent = "all done";
    $("instance-detail").textContent = "";
    $("instance-class").textContent = "";
    $("picture").removeAttribute("src");
    $("suggestion-text").textContent = "–";
    if (state && state.done < state.total) {
      say(`No instance left for this page: the other ${state.total - state.done} are shown on ` +
          "another page.");
    } else {
      say(`Every instance has a class (${state ? state.total : 0}). u undoes the last one.`);
    }
    drawState();
    return;
  }
  box.dataset.key = `${item.volume}/${item.label}`;
  $("instance-key").textContent = `${item.volume} · label ${item.label}`;
  $("instance-detail").textContent =
    `#${item.position + 1} of ${state.total} · ${item.voxels} voxels · centroid ${item.centroid.join(", ")}`;
  const cls = $("instance-class");
  cls.textContent = item.class ? `class: ${item.class}` : "no class yet";
  cls.classList.toggle("has", Boolean(item.class));
  const s = item.suggestion;
  const text = $("suggestion-text");
  text.replaceChildren();
  if (s) {
    const b = document.createElement("b");
    b.textContent = s.class;
    text.append(b, ` confidence ${(100 * s.confidence).toFixed(0)} %`);
    $("suggestion").dataset.class = s.class;
  } else if (state && state.spread_error) {
    text.textContent = `label spreading failed: ${state.spread_error}`;
  } else {
    text.textContent = "none yet (label spreading needs two classes)";
    $("suggestion").dataset.class = "";
  }
  const slider = $("z");
  slider.max = String(item.depth - 1);
  slider.value = String(z);
  $("z-value").textContent = `${z} / ${item.depth - 1}`;
  drawState();
}

function showPicture() {
  const img = $("picture");
  const url = pictureUrl(item, z === item.centroid[0] ? undefined : z);
  img.src = url;
}

$("picture").addEventListener("load", () => {
  if (pressedAt !== null) {
    timings.push(performance.now() - pressedAt);
    pressedAt = null;
  }
  $("picture").style.width = `${$("picture").naturalWidth * zoom}px`;
  $("picture").dataset.shown = $("instance").dataset.key;
});

function show(next) {
  item = next;
  if (item) {
    z = item.centroid[0];
    showPicture();
    for (const u of item.upcoming || []) new Image().src = pictureUrl(u);
  }
  drawItem();
}

function showAt(index, fresh) {
  at = index;
  show(fresh);
}

// The next instance: forward in this page's trail, else the server's next unannotated one (which an
// annotate or skip answer already carries as `next`).
async function goNext(answer) {
  if (at < trail.length - 1) {
    const next = trail[at + 1];
    const data = await api(`/api/instance/${key(next)}?client=${clientId}`);
    state = data.state;
    showAt(at + 1, data.item);
    return;
  }
  const data = answer && "next" in answer ? { item: answer.next, state: answer.state }
                                          : await api(`/api/next?client=${clientId}`);
  state = data.state;
  if (data.item) {
    trail = trail.slice(0, at + 1);
    trail.push({ volume: data.item.volume, label: data.item.label });
    showAt(trail.length - 1, data.item);
  } else {
    at = trail.length;
    show(null);
  }
}

async function browse(direction) {
  const target = at + direction;
  if (target >= 0 && target < trail.length) {
    const data = await api(`/api/instance/${key(trail[target])}?client=${clientId}`);
    state = data.state;
    showAt(target, data.item);
    return;
  }
  const from = item || trail[trail.length - 1];
  if (!from) return;
  const data = await api(`/api/step/${key(from)}?client=${clientId}&dir=${direction}`);
  if (!data.item) {
    say(direction < 0 ? "this is the first instance" : "this is the last instance");
    return;
  }
  state = data.state;
  const entry = { volume: data.item.volume, label: data.item.label };
  if (direction < 0 && target < 0) {
    trail.unshift(entry);
    showAt(0, data.item);
  } else {
    trail.push(entry);
    showAt(trail.length - 1, data.item);
  }
}

async function annotate(cls) {
  if (!item) return;
  const body = { client: clientId, volume: item.volume, label: item.label, class: cls };
  if (item.class) body.previous = item.class;
  let data;
  try {
    data = await api("/api/annotate", body);
    state = data.state;
    say(`${item.volume} · label ${item.label}: ${cls}`);
  } catch (error) {
    say(error.message, true);
    if (!error.message.includes("already annotated")) return;
  }
  await goNext(data);
}

async function skip() {
  if (!item) return;
  const data = await api("/api/skip", { client: clientId, volume: item.volume, label: item.label });
  state = data.state;
  say(`skipped ${item.volume} · label ${item.label}`);
  await goNext(data);
}

async function undo() {
  const data = await api("/api/undo", { client: clientId });
  state = data.state;
  const entry = { volume: data.item.volume, label: data.item.label };
  const index = trail.findIndex((t) => sameItem(t, entry));
  if (index >= 0) {
    showAt(index, data.item);
  } else {
    trail = trail.slice(0, at + 1);
    trail.push(entry);
    showAt(trail.length - 1, data.item);
  }
  say(`undone: ${entry.volume} · label ${entry.label}`);
}

function moveZ(delta) {
  if (!item) return;
  z = Math.min(item.depth - 1, Math.max(0, z + delta));
  showPicture();
  drawItem();
}

function setZoom(factor) {
  zoom = Math.min(8, Math.max(0.25, zoom * factor));
  $("zoom-value").textContent = `${Math.round(zoom * 100)}%`;
  const img = $("picture");
  if (img.naturalWidth) img.style.width = `${img.naturalWidth * zoom}px`;
}

function handle(event) {
  const k = event.key;
  if (state) {
    const spec = state.classes.find((c) => c.key === k);
    if (spec) return () => annotate(spec.name);
  }
  switch (k) {
    case "x": case "X": return () => annotate("bad_segmentation");
    case "Enter":
      return () => (item && item.suggestion ? annotate(item.suggestion.class)
                                            : Promise.resolve(say("no suggestion to accept")));
    case "s": case "S": return () => skip();
    case "u": case "U": case "Backspace": return () => undo();
    case "ArrowLeft": return () => browse(-1);
    case "ArrowRight": return () => browse(1);
    case "PageUp": return () => Promise.resolve(moveZ(-1));
    case "PageDown": return () => Promise.resolve(moveZ(1));
    case "+": case "=": return () => Promise.resolve(setZoom(1.25));
    case "-": case "_": return () => Promise.resolve(setZoom(0.8));
    default: return null;
  }
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const action = handle(event);
  if (!action) return;
  event.preventDefault();
  const t0 = performance.now();
  queue = queue.then(() => {
    pressedAt = t0;
    return action();
  }).catch((error) => say(error.message, true));
}, true);

$("z").addEventListener("input", (event) => {
  if (!item) return;
  z = Number(event.target.value);
  showPicture();
  $("z-value").textContent = `${z} / ${item.depth - 1}`;
});
$("zoom-in").addEventListener("click", () => setZoom(1.25));
$("zoom-out").addEventListener("click", () => setZoom(0.8));

queue = queue.then(async () => {
  const data = await api("/api/state");
  state = data;
  drawState();
  await goNext();
  say(item ? "ready: press a class key" : "");
  document.body.dataset.ready = "1";
}).catch((error) => say(error.message, true));
