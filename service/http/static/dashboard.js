// rollcall dashboard: reads the /v1 analyst API with a read token and redraws every 5 s.
// Plain browser JavaScript, no dependencies. Everything the API sends is shown through
// textContent and SVG attributes, never as HTML: names come from webhooks.
"use strict";

(() => {
  const TOKEN_KEY = "rollcall.token";
  const EVENT_KEY = "rollcall.event";
  const REFRESH_MS = 5000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const METHODS = {
    payu: "PayU",
    przelewy24: "Przelewy24",
    tpay: "TPay",
    bank_transfer: "Bank transfer",
    unknown: "Unknown",
  };

  const $ = (id) => document.getElementById(id);
  let timer = null;
  let generation = 0; // bumped on sign-in, sign-out and event change: older answers are dropped
  let eventSlugs = "";

  class Unauthorized extends Error {}

  class ApiFailure extends Error {
    constructor(status, body) {
      super(body && body.message ? body.message : `the API answered ${status}`);
      this.status = status;
    }
  }

  // ---- the API -------------------------------------------------------------------------

  async function api(path, token) {
    const response = await fetch(path, {
      headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
    });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (response.status === 401 || response.status === 403) {
      throw new Unauthorized(body && body.message ? body.message : "the token was refused");
    }
    if (!response.ok) throw new ApiFailure(response.status, body);
    return body;
  }

  async function timeline(base, token) {
    // 15-minute buckets; an event whose check-ins span months would need too many of them,
    // so fall back to hours, and to no chart at all.
    for (const bucket of ["15m", "1h"]) {
      try {
        return await api(`${base}/occupancy/timeline?bucket=${bucket}`, token);
      } catch (error) {
        if (!(error instanceof ApiFailure) || error.status !== 400) throw error;
      }
    }
    return null;
  }

  // ---- refresh loop --------------------------------------------------------------------

  async function refresh() {
    clearTimeout(timer);
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      showLogin("");
      return;
    }
    const mine = ++generation;
    try {
      const { events } = await api("v1/events", token);
      if (mine !== generation) return;
      const summary = chooseEvent(events);
      if (!summary) {
        setStatus("No JTE event is configured", true);
      } else {
        const base = `v1/events/${encodeURIComponent(summary.event)}`;
        const [occupancy, buckets, checkIns, payments, projections] = await Promise.all([
          api(`${base}/occupancy`, token),
          timeline(base, token),
          api(`${base}/check-ins?limit=10`, token),
          api(`${base}/payments/summary`, token),
          api("v1/projections", token),
        ]);
        if (mine !== generation) return;
        render(summary, occupancy, buckets, checkIns, payments);
        // A failed view is reported here, by status and by metrics; readiness ignores it.
        const failed = projections.views.filter((v) => v.state === "failed").map((v) => v.view);
        const updated = `updated ${clock(new Date())}`;
        if (failed.length) {
          setStatus(`View ${failed.join(", ")} failed: see rollcall status · ${updated}`, true);
        } else {
          setStatus(`Live · ${updated}`, false);
        }
      }
      showBoard();
    } catch (error) {
      if (mine !== generation) return;
      if (error instanceof Unauthorized) {
        signOut(`The token was not accepted (${error.message}). Sign in with a read token.`);
        return;
      }
      setStatus(`Not updated: ${error.message || "no answer"}; retrying`, true);
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  function chooseEvent(events) {
    const select = $("event");
    const slugs = events.map((e) => e.event).join("\n");
    if (slugs !== eventSlugs) {
      eventSlugs = slugs;
      select.replaceChildren(
        ...events.map((e) => {
          const option = document.createElement("option");
          option.value = e.event;
          option.textContent = e.event;
          return option;
        }),
      );
      const wanted = sessionStorage.getItem(EVENT_KEY);
      if (wanted && events.some((e) => e.event === wanted)) select.value = wanted;
    }
    select.closest("label").hidden = events.length < 2;
    return events.find((e) => e.event === select.value) || events[0] || null;
  }

  // ---- views ---------------------------------------------------------------------------

  function showLogin(message) {
    $("board").hidden = true;
    $("controls").hidden = true;
    $("login").hidden = false;
    const note = $("login-message");
    note.textContent = message;
    note.hidden = !message;
    $("token").focus();
  }

  function showBoard() {
    $("login").hidden = true;
    $("board").hidden = false;
    $("controls").hidden = false;
  }

  function signOut(message) {
    generation++;
    clearTimeout(timer);
    sessionStorage.removeItem(TOKEN_KEY);
    eventSlugs = "";
    showLogin(message);
  }

  function setStatus(text, stale) {
    const status = $("status");
    status.textContent = text;
    status.classList.toggle("stale", stale);
  }

  function render(summary, occupancy, buckets, checkIns, payments) {
    document.title = `${summary.event} · rollcall`;
    $("registered").textContent = number(summary.registered);
    $("inside").textContent = number(summary.inside_now);
    $("inside-sub").textContent =
      `${plural(occupancy.entries, "entry", "entries")} · ` +
      `${plural(occupancy.exits, "exit")} · ` +
      `${plural(occupancy.unique_attendees_inside, "person", "people")} so far`;
    $("peak").textContent = number(occupancy.peak);
    const peakAt = $("peak-at");
    if (occupancy.peak_at) {
      peakAt.replaceChildren("at ", timeElement(occupancy.peak_at, dateTime));
    } else {
      peakAt.textContent = "no check-ins yet";
    }
    renderTotals(payments.by_currency);
    renderChart(buckets, occupancy);
    renderCheckIns(checkIns.items);
    renderPayments(payments.by_method);
  }

  function renderTotals(byCurrency) {
    const list = $("paid");
    if (byCurrency.length === 0) {
      list.replaceChildren(element("li", "none", "No payments yet"));
      return;
    }
    list.replaceChildren(
      ...byCurrency.map((total) => {
        const item = element("li");
        item.dataset.currency = total.currency;
        item.append(
          element("span", "amount", amount(total.amount)),
          element("span", "currency", total.currency),
          element("span", "count", plural(total.payments, "payment")),
        );
        return item;
      }),
    );
  }

  function renderCheckIns(items) {
    const body = $("checkins").tBodies[0];
    body.replaceChildren(
      ...items.map((item) => {
        const row = element("tr");
        const name = [item.first_name, item.last_name].filter(Boolean).join(" ");
        const who = element("td", "name", name || item.attendee_id);
        who.title = item.attendee_id;
        const when = element("td");
        when.append(timeElement(item.at, dateTime));
        const now = element("td");
        now.append(element("span", item.inside ? "badge in" : "badge", item.inside ? "inside" : "left"));
        row.append(who, when, now);
        return row;
      }),
    );
    $("checkins").hidden = items.length === 0;
    $("checkins-empty").hidden = items.length !== 0;
  }

  function renderPayments(byMethod) {
    const body = $("payments").tBodies[0];
    body.replaceChildren(
      ...byMethod.map((total) => {
        const row = element("tr");
        row.append(
          element("td", "", METHODS[total.method] || total.method),
          element("td", "", total.currency),
          element("td", "num", number(total.payments)),
          element("td", "num", amount(total.amount)),
        );
        return row;
      }),
    );
    $("payments").hidden = byMethod.length === 0;
    $("payments-empty").hidden = byMethod.length !== 0;
  }

  // ---- the occupancy chart (SVG) -------------------------------------------------------

  function renderChart(data, occupancy) {
    const chart = $("chart");
    const note = $("chart-note");
    const buckets = data ? data.buckets : [];
    if (!data) {
      note.textContent = "";
      chart.replaceChildren(element("p", "empty muted", "Too long a span to draw."));
      return;
    }
    if (buckets.length === 0) {
      note.textContent = "";
      chart.replaceChildren(element("p", "empty muted", "No check-ins yet."));
      return;
    }
    const minutes = data.bucket === "1h" ? "1-hour" : data.bucket === "15m" ? "15-minute" : "5-minute";
    note.textContent = `inside at the end of each ${minutes} interval`;

    const width = 860;
    const height = 260;
    const pad = { left: 44, right: 16, top: 14, bottom: 30 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const t0 = Date.parse(data.start);
    const t1 = Date.parse(data.end);
    const first = buckets[0];
    const before = first.inside - first.entered + first.exited;
    const top = Math.max(1, before, ...buckets.map((b) => b.inside), occupancy ? occupancy.peak : 0);
    const step = niceStep(top);
    const yMax = Math.ceil(top / step) * step;
    const x = (t) => pad.left + ((t - t0) / Math.max(1, t1 - t0)) * plotW;
    const y = (n) => pad.top + plotH - (n / yMax) * plotH;

    const svg = svgElement("svg", {
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-label": `Occupancy from ${dateTime(new Date(t0))} to ${dateTime(new Date(t1))}`,
    });

    for (let n = 0; n <= yMax; n += step) {
      svg.append(svgElement("line", { class: "grid", x1: pad.left, x2: width - pad.right, y1: y(n), y2: y(n) }));
      const label = svgElement("text", { class: "axis-label", x: pad.left - 8, y: y(n) + 4, "text-anchor": "end" });
      label.textContent = String(n);
      svg.append(label);
    }

    const sameDay = new Date(t0).toDateString() === new Date(t1 - 1).toDateString();
    const every = Math.max(1, Math.ceil(buckets.length / 8));
    const ticks = [t0, ...buckets.map((b) => Date.parse(b.end))];
    ticks.forEach((t, i) => {
      if (i % every !== 0 && i !== ticks.length - 1) return;
      if (i !== ticks.length - 1 && ticks.length - 1 - i < every / 2) return; // no overlap at the end
      const label = svgElement("text", { class: "axis-label", x: x(t), y: height - 8, "text-anchor": "middle" });
      label.textContent = sameDay ? clockShort(new Date(t)) : `${dayMonth(new Date(t))} ${clockShort(new Date(t))}`;
      svg.append(label);
    });

    const points = [[x(t0), y(before)], ...buckets.map((b) => [x(Date.parse(b.end)), y(b.inside)])];
    const line = points.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" ");
    const base = y(0).toFixed(1);
    svg.append(
      svgElement("polygon", { class: "area", points: `${points[0][0].toFixed(1)},${base} ${line} ${points[points.length - 1][0].toFixed(1)},${base}` }),
      svgElement("polyline", { class: "line", points: line }),
    );

    const highest = Math.max(...buckets.map((b) => b.inside));
    buckets.forEach((b, i) => {
      const [px, py] = points[i + 1];
      const dot = svgElement("circle", {
        class: b.inside === highest && highest > 0 ? "point peak" : "point",
        cx: px.toFixed(1),
        cy: py.toFixed(1),
        r: buckets.length > 60 ? 2 : 4,
        "data-end": b.end,
        "data-inside": b.inside,
      });
      const tip = svgElement("title", {});
      tip.textContent =
        `${clockShort(new Date(b.start))}–${clockShort(new Date(b.end))}: ${b.inside} inside ` +
        `(${b.entered} in, ${b.exited} out) · ${b.start} / ${b.end}`;
      dot.append(tip);
      svg.append(dot);
    });

    chart.replaceChildren(svg);
  }

  function niceStep(top) {
    const rough = top / 4;
    if (rough <= 1) return 1;
    const magnitude = 10 ** Math.floor(Math.log10(rough));
    for (const m of [1, 2, 5, 10]) {
      if (m * magnitude >= rough) return m * magnitude;
    }
    return 10 * magnitude;
  }

  // ---- formatting ----------------------------------------------------------------------

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svgElement(tag, attributes) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
    return node;
  }

  // A time in the browser's local time zone; the exact ISO value in the title and datetime.
  function timeElement(iso, format) {
    const node = document.createElement("time");
    node.dateTime = iso;
    node.title = iso;
    node.textContent = format(new Date(iso));
    return node;
  }

  const two = (n) => String(n).padStart(2, "0");
  const clock = (d) => `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
  const clockShort = (d) => `${two(d.getHours())}:${two(d.getMinutes())}`;
  const dayMonth = (d) => `${two(d.getDate())}.${two(d.getMonth() + 1)}`;
  const dateTime = (d) =>
    `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${clockShort(d)}`;

  const number = (n) => String(n).replace(/\B(?=(\d{3})+(?!\d))/g, "\u202f");

  // Amounts arrive as exact decimal strings ("349.00"): group the digits, never round.
  function amount(text) {
    const [whole, fraction] = String(text).split(".");
    const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, "\u202f");
    return fraction === undefined ? grouped : `${grouped}.${fraction}`;
  }

  const plural = (n, one, many) => `${number(n)} ${n === 1 ? one : many || `${one}s`}`;

  // ---- wiring --------------------------------------------------------------------------

  function start() {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("token");
      const token = input.value.trim();
      if (!token) {
        showLogin("Paste an API token first.");
        return;
      }
      input.value = "";
      sessionStorage.setItem(TOKEN_KEY, token);
      setStatus("Loading…", false);
      refresh();
    });
    $("logout").addEventListener("click", () => signOut("Signed out."));
    $("event").addEventListener("change", () => {
      sessionStorage.setItem(EVENT_KEY, $("event").value);
      refresh();
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && sessionStorage.getItem(TOKEN_KEY)) refresh();
    });
    refresh();
  }

  start();
})();
