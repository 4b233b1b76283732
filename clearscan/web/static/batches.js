/* ClearScan batch pages: while batches are queued or running, poll their JSON every 2 s (the
   API accepts the session cookie for GET) and update each one's status badge, progress bar and
   counts. The list polls GET /api/v1/batches once per round; a batch's own page polls
   GET /api/v1/batches/{id} and reloads (the server renders the per-image results) when the
   batch ends, and at most every 5 s while its images finish. Loaded as a static file (CSP:
   script-src 'self'); text goes in via textContent only. */
(function () {
  "use strict";

  var POLL_MS = 2000;
  var RETRY_MS = 5000;
  var RELOAD_EVERY_MS = 5000;
  var LIVE = { queued: true, running: true };
  var STATUSES = { queued: 1, running: 1, succeeded: 1, failed: 1, cancelled: 1 };

  function countsText(p) {
    var total = p.total || 0;
    var text = (p.done || 0) + " of " + total + " image" + (total === 1 ? "" : "s");
    return p.failed ? text + " \u00b7 " + p.failed + " failed" : text;
  }

  function setText(node, text) {
    if (node && node.textContent !== text) node.textContent = text;
  }

  /* Show `batch` in the elements `find(name)` returns; the batch's status, or null. */
  function show(find, batch) {
    var status = STATUSES[batch.status] ? batch.status : null;
    var p = batch.progress || {};
    if (!status) return null;
    var badge = find("status");
    if (badge) {
      badge.textContent = status;
      badge.className = badge.className.replace(/badge-status-\w+/, "badge-status-" + status);
    }
    var bar = find("bar");
    if (bar && p.total) {
      if (status === "queued" && !p.done) {
        bar.removeAttribute("value");
      } else {
        bar.max = Math.max(p.total, 1);
        bar.value = Math.min(p.done || 0, p.total);
        bar.textContent = bar.value + " / " + bar.max;
      }
    }
    setText(find("counts"), countsText(p));
    return status;
  }

  function poller(url, onData, onStop) {
    var stopped = false;
    function schedule(ms) {
      if (!stopped) window.setTimeout(poll, ms);
    }
    function poll() {
      if (stopped) return;
      if (document.hidden) {
        schedule(POLL_MS);
        return;
      }
      window.fetch(url, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" }
      }).then(function (response) {
        if (response.status === 401 || response.status === 403 || response.status === 404) {
          stopped = true;
          onStop("Live updates stopped: reload the page.");
          return null;
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      }).then(function (data) {
        if (data === null) return;
        if (onData(data) === false) stopped = true;
        schedule(POLL_MS);
      }).catch(function () {
        onStop("Connection lost \u00b7 retrying\u2026");
        schedule(RETRY_MS);
      });
    }
    schedule(POLL_MS);
  }

  /* One batch's page. */
  function watchPage(root) {
    var live = document.querySelector('[data-field="live"]');
    var done = Number(root.dataset.done || "0");
    var loadedAt = Date.now();
    function find(name) {
      return document.querySelector('[data-field="' + name + '"]');
    }
    poller(root.dataset.pollUrl, function (batch) {
      var status = show(find, batch);
      if (!status) return true;
      var p = batch.progress || {};
      if (!LIVE[status]) {
        setText(live, "Finished \u00b7 loading the results\u2026");
        window.location.replace(window.location.pathname);
        return false;
      }
      if (p.done !== done && Date.now() - loadedAt >= RELOAD_EVERY_MS) {
        window.location.replace(window.location.pathname);
        return false;
      }
      return true;
    }, function (message) {
      setText(live, message);
    });
  }

  /* The list: its live rows, by batch id. */
  function watchList(table) {
    poller(table.dataset.pollUrl, function (list) {
      var byId = {};
      (list.items || []).forEach(function (b) {
        byId[b.id] = b;
      });
      var rows = table.querySelectorAll("tr[data-batch-live]");
      var left = 0;
      Array.prototype.forEach.call(rows, function (row) {
        var batch = byId[row.dataset.batch];
        if (!batch) return;
        var status = show(function (name) {
          return row.querySelector('[data-field="' + name + '"]');
        }, batch);
        if (status && !LIVE[status]) row.removeAttribute("data-batch-live");
        else left += 1;
      });
      return left > 0;
    }, function () {});
  }

  function start() {
    Array.prototype.forEach.call(document.querySelectorAll("[data-batch-page]"), watchPage);
    Array.prototype.forEach.call(document.querySelectorAll("[data-batch-list]"), watchList);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
