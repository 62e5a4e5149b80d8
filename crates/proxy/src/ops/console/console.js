// The web console's script (served as /console.js; the page is console.rs). Every five seconds
// it reads /v1/overview from the admin endpoint that served the page, redraws what the server
// rendered (header, counters, tables) the way console.rs renders it, and shows the rates
// between two reads. Data reaches the page only through textContent on elements it creates,
// never as markup, so nothing a peer or a certificate says can become part of the page.
"use strict";

(function () {
  const PERIOD_MS = 5000;
  const DAY = 86400;
  // The last successful read: when it arrived (ms, this browser's clock) and its counters.
  let previous = null;

  // Formatting, as in console.rs.

  function utc(seconds) {
    return new Date(seconds * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function date(seconds) {
    return utc(seconds).slice(0, 10);
  }

  function count(n) {
    return Math.round(n).toLocaleString("en-US");
  }

  function bytes(n) {
    if (n < 1024) return `${Math.round(n)} B`;
    let value = n;
    for (const unit of ["KiB", "MiB", "GiB"]) {
      value /= 1024;
      if (value < 1024) return `${value.toFixed(1)} ${unit}`;
    }
    return `${(value / 1024).toFixed(1)} TiB`;
  }

  function duration(seconds) {
    const s = Math.max(0, seconds);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < DAY) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / DAY)} d ${Math.floor((s % DAY) / 3600)} h`;
  }

  function timeLeft(left) {
    if (left <= 0) return "expired";
    const days = Math.floor(left / DAY);
    if (days === 0) return "less than a day left";
    return days === 1 ? "1 day left" : `${days} days left`;
  }

  function short(fingerprint) {
    return fingerprint.length > 16 ? `${fingerprint.slice(0, 16)}…` : fingerprint;
  }

  function orDash(value) {
    return value === null || value === undefined ? "—" : value;
  }

  // Building the page.

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // A cell showing text, and detail below it when there is one.
  function cell(text, detail, className) {
    const td = element("td", className, text);
    if (detail !== undefined && detail !== null) td.append(element("div", "detail", detail));
    return td;
  }

  function row(cells, className) {
    const tr = element("tr", className);
    tr.append(...cells);
    return tr;
  }

  function spanning(td, columns) {
    td.colSpan = columns;
    return td;
  }

  // A certificate's expiry: shown (its time), the time left, and the warning colours.
  function expiry(shown, notAfter, o) {
    const left = notAfter - o.now;
    const window = o.expiring_within_days * DAY;
    const state = left <= 0 ? " expired" : left <= window ? " soon" : "";
    return cell(shown, timeLeft(left), "expires" + state);
  }

  // Replaces the rows of the table `id` with at most its data-limit of `rows` (an iterable),
  // then a row saying how many of `total` were left out, or that there are none.
  function fill(id, rows, total) {
    const table = document.getElementById(id);
    const columns = table.tHead.rows[0].cells.length;
    const limit = Number(table.dataset.limit);
    const body = document.createElement("tbody");
    let shown = 0;
    for (const tr of rows) {
      if (shown === limit) break;
      body.append(tr);
      shown += 1;
    }
    if (total === 0) {
      body.append(row([spanning(cell(table.dataset.empty, null, "empty"), columns)]));
    } else if (shown < total) {
      const note = `${count(shown)} of ${count(total)} rows shown; /v1/rooms and /v1/certificates have them all`;
      body.append(row([spanning(cell(note, null, "more"), columns)]));
    }
    table.tBodies[0].replaceWith(body);
  }

  function* roomRows(o) {
    for (const room of o.rooms) {
      const held = room.held_messages > 0 ? `${count(room.held_messages)} held, ${bytes(room.held_bytes)}` : null;
      const roomCell = cell(room.id, held, "room");
      roomCell.rowSpan = Math.max(room.members.length, 1);
      if (room.members.length === 0) {
        yield row([roomCell, spanning(cell("no member on this node", null, "empty"), 7)], "first");
        continue;
      }
      for (const [i, m] of room.members.entries()) {
        const cells = [
          cell(m.subject, short(m.fingerprint)),
          cell(orDash(m.peer_class), orDash(m.peer_id)),
          cell(m.address),
          cell(utc(m.connected_since), `for ${duration(o.now - m.connected_since)}`, "time"),
          cell(`${count(m.frames_in)} / ${count(m.frames_out)}`, null, "num"),
          cell(`${bytes(m.bytes_in)} / ${bytes(m.bytes_out)}`, null, "num"),
          expiry(date(m.not_after), m.not_after, o),
        ];
        yield i === 0 ? row([roomCell, ...cells], "first") : row(cells);
      }
    }
  }

  function* remoteRows(o) {
    for (const room of o.rooms) {
      for (const m of room.elsewhere || []) {
        yield row([
          cell(room.id),
          cell(m.node),
          cell(orDash(m.peer_class), orDash(m.peer_id)),
          cell(m.fingerprint, null, "fp"),
        ]);
      }
    }
  }

  function clusterLine(cluster) {
    if (!cluster) return "single node";
    const nodes = cluster.nodes.length ? cluster.nodes.join(", ") : "none";
    return `cluster: redis ${cluster.up ? "up" : "DOWN"} · other nodes: ${nodes} · ` +
      `notes published ${count(cluster.published)}, lost ${count(cluster.lost)}`;
  }

  function text(id, value) {
    document.getElementById(id).textContent = value;
  }

  // The counters, and their rates since the read before (`seconds` ago), where the page has a
  // place for one.
  function counters(o, seconds) {
    for (const box of document.querySelectorAll("[data-counter]")) {
      const key = box.dataset.counter;
      const format = box.dataset.unit === "bytes" ? bytes : count;
      box.querySelector(".value").textContent = format(o.counters[key]);
      const rate = box.querySelector(".rate");
      if (rate && previous && seconds > 0) {
        const delta = o.counters[key] - previous.counters[key];
        // A restarted node counts from zero again: no rate across that.
        if (delta >= 0) {
          const perSecond = delta / seconds;
          rate.textContent = box.dataset.unit === "bytes" ? `${bytes(perSecond)}/s` : `${perSecond.toFixed(1)}/s`;
        } else {
          rate.textContent = "";
        }
      }
    }
  }

  function render(o, seconds) {
    document.title = `ws-proxy ${o.node}`;
    text("node", o.node);
    text("version", o.version);
    text("refreshed", `last refreshed ${utc(o.now)}`);
    const readiness = document.getElementById("readiness");
    readiness.textContent = o.ready ? "ready" : o.readiness;
    readiness.className = o.ready ? "state ok" : "state bad";
    text("cluster", clusterLine(o.cluster));
    counters(o, seconds);
    // The overview carries the first rooms only; its totals count them all.
    const t = o.totals;
    const roomRowCount = o.rooms.reduce((sum, r) => sum + Math.max(r.members.length, 1), 0)
      + Math.max(t.rooms - o.rooms.length, 0);
    text("rooms-summary",
      `${count(t.rooms)} rooms · ${count(t.members)} members here · ${count(t.elsewhere)} on other nodes`);
    fill("rooms", roomRows(o), roomRowCount);
    fill("elsewhere", remoteRows(o), t.elsewhere);
    text("window", String(o.expiring_within_days));
    fill("expiring", o.expiring.map((c) => row([
      cell(c.subject),
      cell(c.serial, null, "fp"),
      cell(c.fingerprint, null, "fp"),
      expiry(utc(c.not_after), c.not_after, o),
      cell(c.rooms.join(", ")),
      cell(utc(c.last_seen), null, "time"),
      cell(c.connected ? "yes" : "no"),
    ])), t.expiring);
    fill("trust", o.trust.map((c) => row([
      cell(c.role),
      cell(c.subject),
      expiry(utc(c.not_after), c.not_after, o),
    ])), o.trust.length);
  }

  function showError(message) {
    const banner = document.getElementById("error");
    banner.textContent = message;
    banner.hidden = message === null;
  }

  async function refresh() {
    try {
      const response = await fetch("/v1/overview", { cache: "no-store", credentials: "same-origin" });
      if (!response.ok) throw new Error(`the admin endpoint answered ${response.status}`);
      const overview = await response.json();
      const at = performance.now();
      render(overview, previous ? (at - previous.at) / 1000 : 0);
      previous = { at, counters: overview.counters };
      showError(null);
    } catch (error) {
      showError(`Could not refresh (${error.message}); showing the last data read. Retrying every ${PERIOD_MS / 1000} s.`);
    } finally {
      setTimeout(refresh, PERIOD_MS);
    }
  }

  refresh();
})();
