// The cluster page: polls /console/api/state and draws it. Text goes in
// with textContent only, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function table(id, head, rows) {
  const t = $(id);
  t.replaceChildren();
  const tr = el("tr");
  head.forEach((h) => tr.appendChild(el("th", h)));
  t.appendChild(tr);
  if (rows.length === 0) {
    const r = el("tr");
    const td = el("td", "none", "muted");
    td.colSpan = head.length;
    r.appendChild(td);
    t.appendChild(r);
  }
  rows.forEach((cells) => {
    const r = el("tr");
    cells.forEach((c, i) => {
      // The last column holds free text (a state, a reason): it wraps.
      const td = el("td", c instanceof Node ? undefined : c, i === cells.length - 1 ? "wrap" : undefined);
      if (c instanceof Node) td.appendChild(c);
      r.appendChild(td);
    });
    t.appendChild(r);
  });
}

function ago(secs) {
  if (secs === null || secs === undefined) return "";
  if (secs < 0) secs = 0;
  if (secs < 120) return secs + " s ago";
  if (secs < 7200) return Math.round(secs / 60) + " min ago";
  return Math.round(secs / 3600) + " h ago";
}

function mark(ok, yes, no) {
  return el("span", ok ? yes : no, ok ? "ok" : "bad");
}

let csrf = "";

// A change: JSON to the page's API with the session's CSRF token; the
// answer, or the refusal's reason shown on the page.
async function act(path, body) {
  const r = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json", "x-csrf-token": csrf },
    body: JSON.stringify(body),
  });
  const answer = await r.json().catch(() => ({ error: "HTTP " + r.status }));
  const shown = $("action-error");
  if (!r.ok) {
    shown.textContent = answer.error || ("HTTP " + r.status);
    shown.hidden = false;
    return null;
  }
  shown.hidden = true;
  return answer;
}

function button(text, onClick) {
  const b = el("button", text);
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

async function drawTokens() {
  const r = await fetch("/console/api/tokens", { credentials: "same-origin", cache: "no-store" });
  if (!r.ok) return;
  const tokens = await r.json();
  table("tokens", ["Token", "Role", "Expires", "Uses", "Created by", ""], tokens.map((t) => [
    t.id, t.role, new Date(t.expiresAt * 1000).toLocaleString(), t.uses, t.createdBy,
    button("Revoke", async () => {
      if (!(await act("/console/api/tokens/revoke", { id: t.id }))) return;
      // The script on show carries that token: it no longer joins anything.
      if ($("join-id").textContent === t.id) $("join").hidden = true;
      drawTokens();
    })]));
}

$("add-node").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  const got = await act("/console/api/join-script", { role: f.role.value, ttlSecs: Number(f.ttl.value) });
  if (!got) return;
  $("join-id").textContent = got.id;
  $("join-expires").textContent = new Date(got.expiresAt * 1000).toLocaleString();
  $("join-script").textContent = got.script;
  $("join").hidden = false;
  drawTokens();
});

$("copy").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText($("join-script").textContent);
    $("copy").textContent = "Copied";
  } catch (err) {
    // No clipboard (not a secure context, or refused): select it instead.
    const range = document.createRange();
    range.selectNodeContents($("join-script"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
  }
});

function draw(s) {
  csrf = s.csrf;
  const c = s.cluster || {};
  const etcd = s.etcd || {};
  $("who").textContent = "signed in (link from " + s.signedInBy + ")";
  $("served-by").textContent = s.servedBy;
  $("refreshed").textContent = new Date(s.gatheredAt * 1000).toLocaleTimeString();
  const behind = s.now - s.gatheredAt;
  const stale = $("stale");
  stale.hidden = behind < 10;
  stale.textContent = "This master is slow to read the cluster: what it shows is " + behind + " s old.";
  document.querySelector("#signout input[name=csrf]").value = s.csrf;

  const verdict = $("verdict");
  verdict.textContent = s.healthy ? "healthy" : "needs attention";
  verdict.className = "pill " + (s.healthy ? "ok" : "bad");
  const problems = $("problems");
  problems.replaceChildren();
  s.problems.forEach((p) => problems.appendChild(el("li", p)));
  s.warnings.forEach((w) => problems.appendChild(el("li", w, "warn")));

  const purgeView = {};
  ((c.purge || {}).nodes || []).forEach((n) => { purgeView[n.name] = n; });
  const revision = c.settings_revision;
  const balancer = (b) => {
    if (!b) return el("span", "-", "muted");
    const text = b.error ? "not listening: " + b.error : b.up + " of " + b.total + " up";
    return el("span", text, b.error || b.up === 0 ? "bad" : (b.up < b.total ? "warn" : "ok"));
  };
  table("nodes", ["Node", "Role", "Address", "Healthy", "Kubernetes", "hakube", "Heartbeat", "Settings", "Balancer", "", "State"],
    (c.nodes || []).map((n) => {
      const v = purgeView[n.name];
      let lost = "";
      const a = v ? v.assessment : null;
      if (a && a.state !== "alive") {
        lost = "for " + ago(a.lost_for).replace(" ago", "") +
          (a.purge_in !== undefined && a.purge_in !== null ? "; purged in " + ago(a.purge_in).replace(" ago", "") : "") +
          (a.state === "due" ? "; purge due" : "") + (v.held_back ? "; held back: " + v.held_back : "");
      }
      const kube = n.versions ? (n.versions.kubelet || n.versions["kube-apiserver"] || "") : "";
      return [n.name, n.role, n.address,
        n.healthy === undefined ? el("span", "?", "muted") : mark(n.healthy, "yes", "no"),
        kube, n.hakube ? n.hakube.version : "", ago(s.now - n.heartbeat_at),
        n.settings_revision === revision ? el("span", "current", "ok") : el("span", "rev " + n.settings_revision, "warn"),
        balancer(n.balancer),
        // Only for a node whose heartbeat stopped; the agent decides (and
        // refuses a removal that would cost etcd its quorum).
        s.now - n.heartbeat_at > 15 && n.name !== s.servedBy ? button("Remove", async () => {
          if (prompt("Remove " + n.name + " from the cluster? Type its name to confirm.") !== n.name) return;
          if (await act("/console/api/nodes/remove", { name: n.name })) refresh();
        }) : "",
        lost ? el("span", "lost " + lost, "bad") :
          (Object.hasOwn(s.joining, n.name) ? el("span", "joining: " + s.joining[n.name], "warn") : "")];
    }));

  const members = etcd.members || [];
  $("etcd-summary").textContent = etcd.voters === undefined ? "this master has no etcd report" :
    etcd.voters + " voters, quorum " + etcd.quorum + ", survives the loss of " + etcd.failures_tolerated +
    (etcd.healthy ? "" : " — unhealthy: " + (etcd.error || ""));
  table("members", ["Member", "Kind", "Healthy", "Client URL"], members.map((m) => [
    m.name || "(not started)", m.is_learner ? "learner" : "voter",
    m.healthy === null || m.healthy === undefined ? el("span", "not probed", "muted") : mark(m.healthy, "yes", "no: " + (m.error || "")),
    (m.client_urls || []).join(", ")]));

  const control = $("control");
  control.replaceChildren();
  const row = (k, v) => { control.appendChild(el("dt", k)); control.appendChild(el("dd", v)); };
  const spec = c.settings || {};
  row("Elected agent", c.leader || "none");
  row("Load-balancer address", spec.loadBalancerAddress || "none (each node's own balancer only)");
  (c.vip_holders || []).forEach(([addr, h]) => {
    row("Virtual IP " + addr, h ? h.node + " since " + new Date(h.since * 1000).toLocaleString() + (h.after ? " (took it over from " + h.after + ")" : "") : "no master holds it");
  });
  const ch = c.load_balancer_change;
  if (ch) {
    const from = ch.change.from || "none";
    row("Address change", from + " → " + ch.change.to + ", phase " + ch.change.phase + ", started by " +
      ch.change.startedBy + " " + ago(s.now - ch.change.startedAt) + (ch.waiting ? "; waiting: " + ch.waiting : ""));
    ch.masters.forEach((m) => row("  " + m.name, m.state.state + ": " + m.state.detail));
  }
  if (c.upgrade) row("Upgrade", JSON.stringify(c.upgrade));
  row("Settings", "revision " + revision + " by " + (c.settings_written_by || "?") +
    ((c.not_converged || []).length ? "; not yet on it: " + c.not_converged.join(", ") : "; every node on it"));

  const certs = $("certificates");
  certs.replaceChildren();
  const until = (pair) => {
    if (!pair) return "none";
    const days = Math.floor((pair[1] - s.now) / 86400);
    return pair[0] + ", until " + new Date(pair[1] * 1000).toLocaleDateString() + " (" + days + " days)";
  };
  const leaf = s.certificates.firstLeaf;
  const ca = s.certificates.firstCa;
  certs.appendChild(el("dt", "First certificate to end"));
  certs.appendChild(el("dd", until(leaf), leaf && leaf[1] - s.now < 30 * 86400 ? "bad" : undefined));
  certs.appendChild(el("dt", "First CA to end"));
  certs.appendChild(el("dd", until(ca), ca && ca[1] - s.now < 365 * 86400 ? "warn" : undefined));
  const lb = s.balancer || { backends: [] };
  $("balancer-listen").textContent = lb.listen ? "(" + lb.listen + (lb.error ? ": " + lb.error : "") + ")" : "(none on this master)";
  table("balancer", ["Backend", "Address", "Health", "Since", "Active", "Connections"], (lb.backends || []).map((b) => [
    b.name, b.address, mark(b.health === "up", b.health, b.health), ago(s.now - b.since), b.active, b.connections]));

  table("addons", ["Add-on", "Namespace", "Ready", "State"], (s.addons || []).map((a) =>
    [a.name, a.namespace, a.ready + " / " + a.desired, mark(a.desired > 0 && a.ready >= a.desired, a.message, a.message)]));
  // The nodes that joined last, newest first (a node joined again counts from its latest join).
  table("joins", ["Node", "Role", "Joined"], (c.nodes || []).slice().sort((a, b) => b.joined_at - a.joined_at)
    .slice(0, 5).map((n) => [n.name, n.role, ago(s.now - n.joined_at)]));
  table("purges", ["Node", "Role", "Lost for", "Purged", "By"], (c.purged || []).map((p) =>
    [p.node.name, p.node.role, ago(p.lost_for).replace(" ago", ""), ago(s.now - (p.finished_at || p.started_at)), p.started_by]));
}

async function refresh() {
  try {
    const r = await fetch("/console/api/state", { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) {
      location.href = "/console";
      return;
    }
    if (!r.ok) throw new Error("HTTP " + r.status);
    draw(await r.json());
  } catch (e) {
    const s = $("stale");
    s.textContent = "Cannot refresh (" + e.message + "); showing what this master said last.";
    s.hidden = false;
  }
}

// The next poll is asked for once the last one is answered: a slow
// master never gets a pile of them.
async function poll() {
  await refresh();
  setTimeout(poll, 3000);
}
poll();
drawTokens();
setInterval(drawTokens, 15000);
