// rollcall dashboard: reads the /v1 analyst API with a read token and redraws every 5 s; with an
// admin token it also shows the delivery log (/v1/deliveries), which never redraws on its own.
// Plain browser JavaScript, no dependencies. Everything the API sends is shown through
// textContent and SVG attributes, never as HTML: names come from webhooks.
"use strict";

(() => {
  const TOKEN_KEY = "rollcall.token";
  const EVENT_KEY = "rollcall.event";
  const DAY_KEY = "rollcall.day";
  const VIEW_KEY = "rollcall.view"; // "board" (the event) or "log" (the delivery log)
  const LOG_PAGE = 25; // rows per page of the delivery log; "More" follows the keyset cursor
  const PAD_BUCKETS = 6; // 30 minutes of 5-minute buckets either side of the day's activity
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
  // The shown event's IANA time zone (from /v1/events): its days are cut, and every time is
  // shown, in it, whatever the browser's own zone.
  let zone = "UTC";
  let generation = 0; // bumped on sign-in, sign-out and event change: older answers are dropped
  let eventSlugs = "";
  let doctorAllowed = true; // false once the token proves not to be an admin's
  let logGeneration = 0; // bumped per delivery-log request: older answers are dropped
  let detailGeneration = 0;
  let logLoaded = false;
  let logCursor = null;

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

  // A day's bounds in the event's time zone: its local midnights (23 or 25 hours apart on a
  // DST day).
  function dayBounds(day) {
    const [y, m, d] = day.split("-").map(Number);
    return [midnight(y, m, d), midnight(y, m, d + 1)];
  }

  // The instant the event's clocks show y-m-d 00:00 (Date.UTC carries d + 1 into the month).
  function midnight(y, m, d) {
    const wanted = Date.UTC(y, m - 1, d);
    let guess = wanted;
    for (let i = 0; i < 3; i += 1) {
      const p = parts(new Date(guess));
      const shown = Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, p.second);
      if (shown === wanted) break;
      guess += wanted - shown;
    }
    return new Date(guess);
  }

  const formatters = new Map();

  // The event's wall clock at `date`: year, month, day, hour, minute, second.
  function parts(date) {
    let format = formatters.get(zone);
    if (!format) {
      format = new Intl.DateTimeFormat("en-GB", {
        timeZone: zone,
        hourCycle: "h23",
        year: "numeric",
        month: "2-digit",
        day: "2-digit",
        hour: "2-digit",
        minute: "2-digit",
        second: "2-digit",
      });
      formatters.set(zone, format);
    }
    const out = {};
    for (const { type, value } of format.formatToParts(date)) {
      if (type !== "literal") out[type] = Number(value);
    }
    return out;
  }

  function localDay(date) {
    const p = parts(date);
    return `${p.year}-${two(p.month)}-${two(p.day)}`;
  }

  async function download(kind) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const slug = $("event").value;
    if (!token || !slug) return;
    const base = `v1/events/${encodeURIComponent(slug)}`;
    let path = `${base}/roster?format=csv`;
    if (kind === "payments") path = `${base}/payments?format=csv`;
    if (kind === "timeline" && $("day").value) {
      const [from, to] = dayBounds($("day").value);
      path = `${base}/occupancy/timeline?bucket=5m&format=csv` +
        `&from=${encodeURIComponent(from.toISOString())}&to=${encodeURIComponent(to.toISOString())}`;
    }
    const note = $("download-message");
    note.hidden = true;
    const response = await fetch(path, {
      headers: { Authorization: `Bearer ${token}`, Accept: "text/csv" },
      cache: "no-store",
      credentials: "omit",
    });
    if (!response.ok) {
      note.textContent = `The ${kind} CSV could not be downloaded (${response.status}).`;
      note.hidden = false;
      return;
    }
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    const day = kind === "timeline" ? `-${$("day").value}` : "";
    link.download = `${slug}-${kind}${day}.csv`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }

  async function search(event) {
    event.preventDefault();
    const token = sessionStorage.getItem(TOKEN_KEY);
    const text = $("search").value.trim();
    const table = $("search-results");
    if (!token || !text) {
      table.hidden = true;
      $("search-empty").hidden = true;
      return;
    }
    const base = `v1/events/${encodeURIComponent($("event").value)}`;
    const page = await api(`${base}/roster?q=${encodeURIComponent(text)}&limit=20`, token);
    table.tBodies[0].replaceChildren(
      ...page.items.map((a) => {
        const row = element("tr");
        const name = [a.first_name, a.last_name].filter(Boolean).join(" ");
        const who = element("td", "name", name || a.attendee_id);
        who.title = a.attendee_id;
        row.append(
          who,
          element("td", "", a.status),
          element("td", "", a.checked_in ? "yes" : "no"),
          element("td", "", a.paid ? `${amount(a.amount || "0")} ${a.currency || ""}` : "no"),
        );
        return row;
      }),
    );
    table.hidden = page.items.length === 0;
    $("search-empty").hidden = page.items.length !== 0;
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
      zone = (summary && summary.timezone) || "UTC";
      $("zone").textContent = zone;
      if (!summary) {
        setStatus("No JTE event is configured", true);
      } else {
        const base = `v1/events/${encodeURIComponent(summary.event)}`;
        const [days, health] = await Promise.all([
          api(`${base}/days?tz=${encodeURIComponent(zone)}`, token),
          api("v1/health", token),
        ]);
        if (mine !== generation) return;
        const day = chooseDay(days.days);
        const [from, to] = dayBounds(day);
        const range = `from=${encodeURIComponent(from.toISOString())}` +
          `&to=${encodeURIComponent(to.toISOString())}`;
        const [occupancy, buckets, inside, checkIns, payments] = await Promise.all([
          api(`${base}/occupancy`, token),
          api(`${base}/occupancy/timeline?bucket=5m&${range}`, token),
          api(`${base}/inside?since=${encodeURIComponent(from.toISOString())}`, token),
          api(`${base}/check-ins?limit=10`, token),
          api(`${base}/payments/summary?tz=${encodeURIComponent(zone)}`, token),
        ]);
        if (mine !== generation) return;
        const latest = days.days.length === 0 || days.days[0].day === day;
        render(summary, occupancy, buckets, inside, latest, [from, to], checkIns, payments);
        renderHealth(health);
        await renderDoctor(health, token, mine);
        const updated = `updated ${clock(new Date())}`;
        const failed = health.views.filter((v) => v.state === "failed").map((v) => v.view);
        if (failed.length) {
          setStatus(`View ${failed.join(", ")} failed: see rollcall status · ${updated}`, true);
        } else if (health.stale) {
          setStatus(`Stale: the views are not moving · ${updated}`, true);
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

  // The day shown: the one picked, else the latest with activity, else today.
  function chooseDay(days) {
    const select = $("day");
    const wanted = sessionStorage.getItem(DAY_KEY);
    const choices = days.map((d) => d.day);
    const today = localDay(new Date());
    if (!choices.includes(today) && choices.length === 0) choices.push(today);
    const labels = choices.join("\n");
    if (select.dataset.choices !== labels) {
      select.dataset.choices = labels;
      select.replaceChildren(
        ...choices.map((day, i) => {
          const option = document.createElement("option");
          option.value = day;
          option.textContent = i === 0 ? `${day} (latest)` : day;
          return option;
        }),
      );
    }
    select.value = wanted && choices.includes(wanted) ? wanted : choices[0];
    return select.value;
  }

  function renderHealth(health) {
    const last = $("health-last");
    if (health.last_delivery_at) {
      last.replaceChildren(timeElement(health.last_delivery_at, dateTime), ` (${ago(health.last_delivery_at)})`);
    } else {
      last.textContent = "none yet";
    }
    $("health-refused").textContent = number(health.refused_last_hour);
    $("health-quarantined").textContent = number(health.quarantined_last_hour);
    const lag = Math.max(0, ...health.views.map((v) => v.lag_seconds));
    const behind = health.views.reduce((n, v) => n + v.lag_events, 0);
    $("health-lag").textContent = behind ? `${lag.toFixed(0)} s (${number(behind)} waiting)` : "none";
    document.body.classList.toggle("stale", health.stale);
    const banner = $("stale-banner");
    banner.hidden = !health.stale;
    banner.textContent = health.stale
      ? `The views are not moving (${lag.toFixed(0)} s behind, or failed): the figures below may be out of date.`
      : "";
  }

  // With an admin token and refusals in the last hour: the doctor's advice. A read token gets
  // 403 once, and is not asked again (the advice shows header names, so it is for admins).
  async function renderDoctor(health, token, mine) {
    const panel = $("doctor");
    if (!doctorAllowed || health.refused_last_hour === 0) {
      panel.hidden = true;
      return;
    }
    const response = await fetch("v1/doctor?hours=1", {
      headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
    });
    if (mine !== generation) return;
    if (response.status === 403) {
      doctorAllowed = false;
      panel.hidden = true;
      return;
    }
    if (!response.ok) return;
    const diagnosis = await response.json();
    const parts = [];
    for (const advice of diagnosis.advice) {
      const named = advice.event === "other" ? "Paths naming no configured event" : advice.event;
      const reasons = Object.entries(advice.reasons).map(([r, n]) => `${r} ${n}`).join(", ");
      parts.push(element("p", "", `${named}: ${plural(advice.refusals, "refusal")} (${reasons})`));
      const list = element("ul");
      list.append(...advice.findings.map((finding) => element("li", "", finding)));
      parts.push(list);
      if (advice.config) parts.push(element("pre", "", advice.config));
    }
    $("doctor-advice").replaceChildren(...parts);
    panel.hidden = parts.length === 0;
  }

  function ago(iso) {
    const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (seconds < 90) return `${seconds.toFixed(0)} s ago`;
    if (seconds < 5400) return `${(seconds / 60).toFixed(0)} min ago`;
    if (seconds < 172800) return `${(seconds / 3600).toFixed(0)} h ago`;
    return `${(seconds / 86400).toFixed(0)} days ago`;
  }

  // ---- the delivery log (admin scope) --------------------------------------------------
  // Every value here comes from whoever sent a request (header names, reasons, bodies): it
  // is shown through textContent only. A read token gets 403: the log says it needs an
  // admin token, and the rest of the dashboard carries on with the read token.

  async function adminJson(path, token) {
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
    if (response.status === 401) {
      throw new Unauthorized(body && body.message ? body.message : "the token was refused");
    }
    return { status: response.status, body };
  }

  function needsAdmin() {
    $("log-admin").hidden = false;
    $("log-filters").hidden = true;
    $("log-list").hidden = true;
    $("log-detail").hidden = true;
  }

  function logEvents() {
    const select = $("log-event");
    const slugs = ["", ...eventSlugs.split("\n").filter(Boolean), "other"];
    if (select.dataset.choices === slugs.join("\n")) return;
    const kept = select.value;
    select.dataset.choices = slugs.join("\n");
    select.replaceChildren(
      ...slugs.map((slug) => {
        const option = document.createElement("option");
        option.value = slug;
        option.textContent = slug === "" ? "all" : slug === "other" ? "other (no such event)" : slug;
        return option;
      }),
    );
    select.value = slugs.includes(kept) ? kept : "";
  }

  async function loadLog(more) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return;
    const mine = ++logGeneration;
    logEvents();
    const params = new URLSearchParams();
    for (const [name, id] of [["outcome", "log-outcome"], ["event", "log-event"], ["attendee", "log-attendee"]]) {
      const value = $(id).value.trim();
      if (value) params.set(name, value);
    }
    params.set("limit", String(LOG_PAGE));
    if (more && logCursor) params.set("cursor", logCursor);
    const note = $("log-message");
    try {
      const { status, body } = await adminJson(`v1/deliveries?${params}`, token);
      if (mine !== logGeneration) return;
      if (status === 403) {
        needsAdmin();
        return;
      }
      if (status !== 200) {
        note.textContent = `The log could not be read: ${body && body.message ? body.message : status}`;
        note.hidden = false;
        return;
      }
      note.hidden = true;
      $("log-admin").hidden = true;
      $("log-filters").hidden = false;
      $("log-list").hidden = false;
      const table = $("log-table");
      const rows = body.items.map(logRow);
      if (more) table.tBodies[0].append(...rows);
      else table.tBodies[0].replaceChildren(...rows);
      logCursor = body.next_cursor;
      $("log-more").hidden = !logCursor;
      const count = table.tBodies[0].rows.length;
      table.hidden = count === 0;
      // A page can end with nothing found yet when the scan stopped (the API reads at most
      // so many stored deliveries per page): say so, and "More" reads further back.
      const empty = $("log-empty");
      empty.textContent = logCursor
        ? `Nothing matches in the ${number(body.scanned)} deliveries read so far: More reads further back.`
        : "Nothing matches.";
      empty.hidden = body.items.length !== 0 || (more && count !== 0);
    } catch (error) {
      if (mine !== logGeneration) return;
      if (error instanceof Unauthorized) {
        signOut(`The token was not accepted (${error.message}). Sign in again.`);
        return;
      }
      note.textContent = `The log could not be read: ${error.message || "no answer"}`;
      note.hidden = false;
    }
  }

  function logRow(item) {
    const row = element("tr", "log-row");
    row.dataset.outcome = item.outcome;
    row.tabIndex = 0;
    const when = element("td", "when");
    when.append(timeElement(item.received_at, stamp));
    const outcome = element("td");
    outcome.append(element("span", `badge ${item.outcome}`, `${item.status} ${item.outcome}`));
    const who = element("td", "attendee", item.attendee_id || "");
    const size = element("td", "num", item.body_size == null ? "–" : bytes(item.body_size));
    row.append(
      when,
      outcome,
      element("td", "event", item.event),
      element("td", "type", item.event_type || (item.path && item.outcome === "rejected" ? item.path : "")),
      who,
      element("td", "reason", item.reason || ""),
      size,
      element("td", "headers", (item.headers || []).join(", ")),
    );
    row.addEventListener("click", () => openDetail(item, row));
    row.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        openDetail(item, row);
      }
    });
    return row;
  }

  // A <dl> of the pairs whose value is set.
  function facts(pairs) {
    const list = element("dl", "facts");
    for (const [name, value] of pairs) {
      if (value === null || value === undefined || value === "") continue;
      list.append(element("dt", "", name));
      const dd = element("dd");
      if (value instanceof Node) dd.append(value);
      else dd.textContent = String(value);
      list.append(dd);
    }
    return list;
  }

  async function openDetail(item, row) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return;
    const mine = ++detailGeneration;
    for (const other of $("log-table").querySelectorAll("tr.selected")) other.classList.remove("selected");
    row.classList.add("selected");
    const panel = $("log-detail");
    const title = $("detail-title");
    title.textContent = `${item.status} ${item.outcome} · ${stamp(new Date(item.received_at))}`;
    const parts = [];
    if (item.outcome === "rejected") {
      parts.push(
        facts([
          ["Received", timeElement(item.received_at, stamp)],
          ["Answer", `${item.status} (${item.reason || "refused"})`],
          ["Event", item.event],
          ["Path", item.path],
          ["Peer", item.peer],
          ["Body size", item.body_size == null ? null : bytes(item.body_size)],
        ]),
        element("h4", "", "Headers that came (names only: no value is kept)"),
      );
      const names = element("ul", "header-names");
      names.append(
        ...(item.headers || []).map((name) => {
          const shape = (item.shapes || {})[name];
          const line = element("li");
          line.append(element("code", "", name));
          if (shape) line.append(` · value shaped ${shape}`);
          return line;
        }),
      );
      parts.push(names);
      $("detail-body").replaceChildren(...parts);
      panel.hidden = false;
      panel.scrollIntoView({ block: "nearest" });
      return;
    }
    if (item.outcome === "duplicate") {
      parts.push(
        element("p", "muted", "A repeat of a delivery already stored (answered 200, nothing stored); " +
          "the stored delivery it repeats follows."),
        facts([
          ["Repeat received", timeElement(item.received_at, stamp)],
          ["Path", item.path],
          ["Peer", item.peer],
        ]),
      );
    }
    $("detail-body").replaceChildren(...parts, element("p", "muted", "Loading…"));
    panel.hidden = false;
    panel.scrollIntoView({ block: "nearest" });
    if (!item.key) {
      $("detail-body").replaceChildren(...parts, element("p", "muted", "No stored delivery to show."));
      return;
    }
    try {
      const { status, body } = await adminJson(`v1/deliveries/${encodeURIComponent(item.key)}`, token);
      if (mine !== detailGeneration) return;
      if (status === 403) {
        needsAdmin();
        return;
      }
      if (status !== 200) {
        const why = body && body.message ? body.message : `the API answered ${status}`;
        $("detail-body").replaceChildren(...parts, element("p", "message", `Not shown: ${why}`));
        return;
      }
      $("detail-body").replaceChildren(...parts, ...storedDetail(body));
    } catch (error) {
      if (mine !== detailGeneration) return;
      if (error instanceof Unauthorized) {
        signOut(`The token was not accepted (${error.message}). Sign in again.`);
        return;
      }
      $("detail-body").replaceChildren(...parts, element("p", "message", `Not shown: ${error.message}`));
    }
  }

  function storedDetail(d) {
    const when = (iso) => (iso ? timeElement(iso, stamp) : null);
    const parts = [
      facts([
        ["Received", when(d.received_at)],
        ["Outcome", d.outcome],
        ["Event", d.event],
        ["Delivery id", d.delivery_id],
        ["Event type", d.event_type],
        ["Attendee", d.attendee_id],
        ["Occurred at", when(d.occurred_at)],
        ["Quarantined because", d.quarantine_reason],
        ["Verified by", d.verified_by],
        ["Parser at intake", `version ${d.parser_version}`],
        ["Replay of", d.replay_of],
        ["Key", d.key],
        ["Position", number(d.position)],
      ]),
      element("h4", "", "Read by today's parser"),
    ];
    const now = d.reading_now;
    parts.push(
      facts([
        ["Event type", now.event_type],
        ["Attendee", now.attendee_id],
        ["Occurred at", when(now.occurred_at)],
        ["Unreadable", now.unreadable],
      ]),
      element("h4", "", "Views"),
    );
    const views = element("ul", "views-applied");
    views.append(
      ...d.views.map((v) => {
        const line = element("li", `view-${v.state}`);
        line.dataset.view = v.view;
        line.append(element("code", "", v.view), ` ${v.state.replace(/_/g, " ")}`);
        if (v.error) line.append(`: ${v.error}`);
        return line;
      }),
    );
    parts.push(views, element("h4", "", "Headers kept"));
    const headers = element("table", "table headers-kept");
    const rows = Object.entries(d.headers).map(([name, value]) => {
      const row = element("tr");
      row.append(element("th", "", name), element("td", "", value));
      return row;
    });
    headers.append(element("tbody"));
    headers.tBodies[0].append(...rows);
    const scroller = element("div", "scroll");
    scroller.append(headers);
    parts.push(scroller, element("h4", "", "Body"));
    if (d.body !== null) {
      parts.push(element("pre", "body-text", d.body));
    } else {
      parts.push(element("p", "muted", "Not UTF-8 text: the exact bytes, in base64:"), element("pre", "body-text", d.body_base64));
    }
    return parts;
  }

  const bytes = (n) => (n < 10240 ? `${number(n)} B` : `${number(Math.round(n / 1024))} KiB`);

  // ---- views ---------------------------------------------------------------------------

  function showLogin(message) {
    $("board").hidden = true;
    $("log").hidden = true;
    $("controls").hidden = true;
    $("login").hidden = false;
    const note = $("login-message");
    note.textContent = message;
    note.hidden = !message;
    $("token").focus();
  }

  function currentView() {
    return sessionStorage.getItem(VIEW_KEY) === "log" ? "log" : "board";
  }

  // Shows the event board or the delivery log, whichever was picked; the log loads once on
  // first showing, and again on "Show" (it never redraws on its own: "More" keeps its rows).
  function showBoard() {
    const view = currentView();
    $("login").hidden = true;
    $("controls").hidden = false;
    $("board").hidden = view !== "board";
    $("log").hidden = view !== "log";
    document.body.dataset.view = view;
    $("show-board").setAttribute("aria-pressed", String(view === "board"));
    $("show-log").setAttribute("aria-pressed", String(view === "log"));
    if (view === "log" && !logLoaded) {
      logLoaded = true;
      loadLog(false);
    }
  }

  function setView(view) {
    sessionStorage.setItem(VIEW_KEY, view);
    if (view === "log") logLoaded = false; // opening the log reads its newest page
    showBoard();
  }

  function signOut(message) {
    generation++;
    doctorAllowed = true;
    logGeneration++;
    detailGeneration++;
    logLoaded = false;
    logCursor = null;
    $("log-table").tBodies[0].replaceChildren();
    $("detail-body").replaceChildren();
    $("log-detail").hidden = true;
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

  // The day's figures count from zero at the day's start: attendees still marked inside from
  // an earlier day (never checked out) are shown apart, never as inside today.
  function render(summary, occupancy, timeline, inside, latest, bounds, checkIns, payments) {
    document.title = `${summary.event} · rollcall`;
    $("registered").textContent = number(summary.registered);
    const day = dayFigures(timeline, bounds);
    $("inside-title").textContent = latest ? "Inside now" : "Inside at the day's end";
    $("inside").textContent = number(latest ? inside.inside : day.atEnd);
    $("inside-sub").textContent =
      `${plural(day.entered, "entry", "entries")} · ${plural(day.exited, "exit")} this day`;
    const earlier = $("inside-earlier");
    earlier.hidden = !(latest && inside.earlier > 0);
    earlier.textContent = `${plural(inside.earlier, "person", "people")} still marked inside ` +
      "from an earlier day (never checked out), not counted";
    // The view's own peak is to the second; it is this day's only if it happened this day and
    // nobody was carried in from an earlier day (the view counts them). Else: the day's buckets.
    const peakAt = occupancy.peak_at ? Date.parse(occupancy.peak_at) : NaN;
    const inDay = peakAt >= bounds[0].getTime() && peakAt < bounds[1].getTime();
    const exact = inDay && day.carried === 0 && occupancy.peak >= day.peak;
    const peak = exact ? { n: occupancy.peak, at: occupancy.peak_at } : { n: day.peak, at: day.peakAt };
    $("peak").textContent = number(peak.n);
    const peakNode = $("peak-at");
    if (peak.at && peak.n > 0) {
      peakNode.replaceChildren("at ", timeElement(peak.at, dateTime));
    } else {
      peakNode.textContent = "no check-ins this day";
    }
    renderTotals(payments.by_currency);
    renderChart(day);
    renderCheckIns(checkIns.items);
    renderPayments(payments.by_method);
  }

  // The day's buckets, counted from zero at its start, trimmed to its activity (and now).
  function dayFigures(timeline, bounds) {
    const all = timeline.buckets;
    const first = all[0];
    const carried = first ? first.inside - first.entered + first.exited : 0;
    const values = all.map((b) => ({ ...b, inside: Math.max(0, b.inside - carried) }));
    const active = values.map((b, i) => (b.entered + b.exited > 0 ? i : -1)).filter((i) => i >= 0);
    const nowIndex = values.findIndex((b) => Date.parse(b.end) >= Date.now());
    let lo = active.length ? Math.max(0, active[0] - PAD_BUCKETS) : 0;
    let hi = active.length ? Math.min(values.length - 1, active[active.length - 1] + PAD_BUCKETS) : -1;
    if (nowIndex >= 0 && Date.now() >= bounds[0].getTime()) {
      hi = Math.max(hi, nowIndex);
      if (!active.length) lo = Math.max(0, nowIndex - 2 * PAD_BUCKETS);
    }
    const shown = hi >= lo ? values.slice(lo, hi + 1) : [];
    let peak = 0;
    let peakAt = null;
    for (const b of values) {
      if (b.inside > peak) {
        peak = b.inside;
        peakAt = b.end;
      }
    }
    const upToNow = values.filter((b) => Date.parse(b.start) <= Date.now());
    return {
      buckets: shown,
      start: shown.length ? shown[0].start : null,
      end: shown.length ? shown[shown.length - 1].end : null,
      entered: values.reduce((n, b) => n + b.entered, 0),
      exited: values.reduce((n, b) => n + b.exited, 0),
      atEnd: upToNow.length ? upToNow[upToNow.length - 1].inside : 0,
      carried,
      peak,
      peakAt,
    };
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

  function renderChart(data) {
    const chart = $("chart");
    const note = $("chart-note");
    const buckets = data.buckets;
    if (buckets.length === 0) {
      note.textContent = "";
      chart.replaceChildren(element("p", "empty muted", "No check-ins this day."));
      return;
    }
    note.textContent = "inside at the end of each 5-minute interval, counted from the day's start";

    // Drawn at the width it is shown at, so its labels keep their size on a phone.
    const width = Math.max(300, Math.round(chart.clientWidth || 860));
    const height = width < 600 ? 220 : 260;
    const pad = { left: 44, right: 16, top: 14, bottom: 30 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const t0 = Date.parse(data.start);
    const t1 = Date.parse(data.end);
    const first = buckets[0];
    const before = first.inside - first.entered + first.exited;
    const top = Math.max(1, before, ...buckets.map((b) => b.inside));
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

    const sameDay = localDay(new Date(t0)) === localDay(new Date(t1 - 1));
    const every = Math.max(1, Math.ceil(buckets.length / Math.max(2, Math.floor(width / 90))));
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

  // A time in the event's time zone; the exact ISO value in the title and datetime.
  function timeElement(iso, format) {
    const node = document.createElement("time");
    node.dateTime = iso;
    node.title = iso;
    node.textContent = format(new Date(iso));
    return node;
  }

  const two = (n) => String(n).padStart(2, "0");
  const clock = (d) => {
    const p = parts(d);
    return `${two(p.hour)}:${two(p.minute)}:${two(p.second)}`;
  };
  const clockShort = (d) => clock(d).slice(0, 5);
  const dayMonth = (d) => {
    const p = parts(d);
    return `${two(p.day)}.${two(p.month)}`;
  };
  const dateTime = (d) => `${localDay(d)} ${clockShort(d)}`;
  const stamp = (d) => `${localDay(d)} ${clock(d)}`;

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
    $("show-board").addEventListener("click", () => setView("board"));
    $("show-log").addEventListener("click", () => setView("log"));
    $("log-filters").addEventListener("submit", (event) => {
      event.preventDefault();
      $("log-detail").hidden = true;
      loadLog(false);
    });
    $("log-more").addEventListener("click", () => loadLog(true));
    $("detail-close").addEventListener("click", () => {
      $("log-detail").hidden = true;
      for (const row of $("log-table").querySelectorAll("tr.selected")) row.classList.remove("selected");
    });
    $("event").addEventListener("change", () => {
      sessionStorage.setItem(EVENT_KEY, $("event").value);
      sessionStorage.removeItem(DAY_KEY); // another event: its own latest day
      refresh();
    });
    $("day").addEventListener("change", () => {
      const select = $("day");
      // Picking the latest day follows the latest from then on.
      if (select.selectedIndex === 0) sessionStorage.removeItem(DAY_KEY);
      else sessionStorage.setItem(DAY_KEY, select.value);
      refresh();
    });
    $("search-form").addEventListener("submit", (event) => {
      search(event).catch((error) => setStatus(`Search failed: ${error.message}`, true));
    });
    for (const button of document.querySelectorAll("[data-csv]")) {
      button.addEventListener("click", () => {
        download(button.dataset.csv).catch((error) => setStatus(`Download failed: ${error.message}`, true));
      });
    }
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && sessionStorage.getItem(TOKEN_KEY)) refresh();
    });
    refresh();
  }

  start();
})();
