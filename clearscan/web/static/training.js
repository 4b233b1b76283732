/* ClearScan training run page: while a run is queued or running, poll its JSON every 2 s
   (GET /api/v1/training-runs/{id}, which accepts the session cookie), update the numbers and
   redraw the loss / validation-AUC chart; when the run ends, reload the page once to show the
   result. Loaded as a static file (CSP: script-src 'self'); text goes in via textContent and
   SVG is built with createElementNS, never from HTML strings.

   The chart geometry mirrors _chart() in clearscan/web/views.py: keep the two in step. */
(function () {
  "use strict";

  var SVG_NS = "http://www.w3.org/2000/svg";
  var POLL_MS = 2000;
  var RETRY_MS = 5000;
  var LIVE = { queued: true, running: true };
  var STATUSES = { queued: 1, running: 1, succeeded: 1, failed: 1, cancelled: 1 };
  var NICE = [1, 1.2, 1.6, 2, 2.4, 3.2, 4, 6, 8, 10];
  var TICK_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];
  var MAX_MARKERS = 60;
  var DASH = "\u2014";

  function isNum(v) {
    return typeof v === "number" && isFinite(v);
  }

  function isInt(v) {
    return isNum(v) && Math.floor(v) === v;
  }

  function fixed3(v) {
    return isNum(v) ? v.toFixed(3) : DASH;
  }

  function pad2(n) {
    return n < 10 ? "0" + n : String(n);
  }

  function duration(seconds) {
    if (!isNum(seconds) || seconds < 0) return DASH;
    var total = Math.round(seconds);
    if (total < 60) return total + " s";
    if (total < 3600) return Math.floor(total / 60) + " min " + pad2(total % 60) + " s";
    return Math.floor(total / 3600) + " h " + pad2(Math.floor((total % 3600) / 60)) + " min";
  }

  function niceCeiling(value) {
    if (!(value > 0) || !isFinite(value)) return 1;
    var base = Math.pow(10, Math.floor(Math.log(value) / Math.LN10));
    for (var i = 0; i < NICE.length; i++) {
      if (value <= NICE[i] * base * (1 + 1e-9)) return NICE[i] * base;
    }
    return 10 * base;
  }

  function tickLabel(value) {
    return String(Number(value.toPrecision(3)));
  }

  function epochTicks(span) {
    if (span <= 1) return [1];
    var step = TICK_STEPS[TICK_STEPS.length - 1];
    for (var i = 0; i < TICK_STEPS.length; i++) {
      if (TICK_STEPS[i] >= (span - 1) / 5) {
        step = TICK_STEPS[i];
        break;
      }
    }
    var ticks = [1];
    for (var t = step; t < span; t += step) {
      // a tick closer than 6% of the axis to the last one would crowd its label
      if (t > 1 && (span - t) / (span - 1) >= 0.06) ticks.push(t);
    }
    ticks.push(span);
    return ticks;
  }

  function el(name, attrs, text) {
    var node = document.createElementNS(SVG_NS, name);
    Object.keys(attrs || {}).forEach(function (key) {
      node.setAttribute(key, String(attrs[key]));
    });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function withTitle(node, text) {
    node.appendChild(el("title", {}, text));
    return node;
  }

  function f1(v) {
    return v.toFixed(1);
  }

  /* Redraw the chart body from the run's progress (history, epochs, best_epoch). */
  function drawChart(svg, progress) {
    var body = svg.querySelector("[data-chart-body]");
    if (!body) return;
    var left = Number(svg.dataset.left);
    var right = Number(svg.dataset.right);
    var top = Number(svg.dataset.top);
    var bottom = Number(svg.dataset.bottom);
    var box = svg.viewBox.baseVal;
    var height = box ? box.height : bottom + 36;
    var history = Array.isArray(progress.history) ? progress.history : [];
    var rows = history.filter(function (h) {
      return h && isInt(h.epoch);
    });
    var span = isInt(progress.epochs) ? progress.epochs : 0;
    span = Math.max.apply(null, [span, 1].concat(rows.map(function (h) { return h.epoch; })));
    var losses = rows.map(function (h) { return h.loss; }).filter(isNum);
    var lossMax = losses.length ? niceCeiling(Math.max.apply(null, losses) * 1.05) : 1;

    function xOf(epoch) {
      if (span <= 1) return (left + right) / 2;
      return left + ((right - left) * (epoch - 1)) / (span - 1);
    }
    function yOf(fraction) {
      return bottom - Math.max(0, Math.min(1, fraction)) * (bottom - top);
    }

    while (body.firstChild) body.removeChild(body.firstChild);
    for (var q = 0; q <= 4; q++) {
      var y = f1(yOf(q / 4));
      body.appendChild(el("line", { "class": "chart-grid", x1: left, x2: right, y1: y, y2: y }));
      body.appendChild(el("text", {
        "class": "chart-tick chart-tick-loss", x: left - 6, y: y, dy: "0.32em", "text-anchor": "end"
      }, tickLabel((lossMax * q) / 4)));
      body.appendChild(el("text", {
        "class": "chart-tick chart-tick-auc", x: right + 6, y: y, dy: "0.32em", "text-anchor": "start"
      }, tickLabel(q / 4)));
    }
    epochTicks(span).forEach(function (t) {
      var x = f1(xOf(t));
      body.appendChild(el("line", { "class": "chart-xtick", x1: x, x2: x, y1: bottom, y2: bottom + 4 }));
      body.appendChild(el("text", {
        "class": "chart-tick", x: x, y: bottom + 16, "text-anchor": "middle"
      }, String(t)));
    });
    body.appendChild(el("text", {
      "class": "chart-axis-title", x: (left + right) / 2, y: height - 2, "text-anchor": "middle"
    }, "epoch"));
    var best = progress.best_epoch;
    if (isInt(best) && rows.some(function (h) { return h.epoch === best; })) {
      var bx = f1(xOf(best));
      body.appendChild(withTitle(el("line", {
        "class": "chart-best", x1: bx, x2: bx, y1: top, y2: bottom
      }), "Best epoch: " + best));
    }
    if (!rows.length) {
      body.appendChild(el("text", {
        "class": "chart-empty", x: (left + right) / 2, y: (top + bottom) / 2, "text-anchor": "middle"
      }, "The curves appear after the first epoch."));
      return;
    }
    var lossPoints = [];
    var aucPoints = [];
    var markers = [];
    rows.forEach(function (h) {
      var x = f1(xOf(h.epoch));
      var m = { x: x, lossY: null, aucY: null };
      if (isNum(h.loss)) {
        m.lossY = f1(yOf(h.loss / lossMax));
        lossPoints.push(x + "," + m.lossY);
      }
      if (isNum(h.val_auc)) {
        m.aucY = f1(yOf(h.val_auc));
        aucPoints.push(x + "," + m.aucY);
      }
      m.title = "Epoch " + h.epoch + ": loss " + fixed3(h.loss) + ", validation AUC " +
        fixed3(h.val_auc);
      markers.push(m);
    });
    body.appendChild(el("polyline", { "class": "chart-line chart-loss", points: lossPoints.join(" ") }));
    body.appendChild(el("polyline", { "class": "chart-line chart-auc", points: aucPoints.join(" ") }));
    if (markers.length <= MAX_MARKERS) {
      markers.forEach(function (m) {
        var g = withTitle(el("g", { "class": "chart-marker" }), m.title);
        if (m.lossY !== null) {
          g.appendChild(el("circle", { "class": "chart-dot chart-dot-loss", cx: m.x, cy: m.lossY, r: 3 }));
        }
        if (m.aucY !== null) {
          g.appendChild(el("circle", { "class": "chart-dot chart-dot-auc", cx: m.x, cy: m.aucY, r: 3 }));
        }
        body.appendChild(g);
      });
    }
  }

  function drawHistory(tbody, progress) {
    var history = Array.isArray(progress.history) ? progress.history : [];
    while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
    history.forEach(function (h) {
      if (!h) return;
      var tr = document.createElement("tr");
      [isInt(h.epoch) ? String(h.epoch) : DASH, fixed3(h.loss), fixed3(h.val_auc), fixed3(h.val_acc)]
        .forEach(function (text) {
          var td = document.createElement("td");
          td.className = "num mono";
          td.textContent = text;
          tr.appendChild(td);
        });
      tbody.appendChild(tr);
    });
  }

  /* Seconds since the run started (to its end), on the server's clock (skew: server - client). */
  function elapsed(run, skew) {
    var start = Date.parse(run.started_at || "");
    if (!isFinite(start)) return null;
    var end = run.finished_at ? Date.parse(run.finished_at) : Date.now() + skew;
    return isFinite(end) ? (end - start) / 1000 : null;
  }

  /* The numbers, as views._live() renders them. */
  function numbers(run, skew) {
    var p = run.progress || {};
    var epoch = isInt(p.epoch) ? p.epoch : null;
    var epochs = isInt(p.epochs) && p.epochs > 0 ? p.epochs : null;
    var step = isInt(p.step) ? p.step : null;
    var steps = isInt(p.steps) && p.steps > 0 ? p.steps : null;
    var stage = p.stage || (run.status === "queued" ? "waiting for the worker" : "");
    var bar = null;
    if (epochs) bar = { value: Math.min(epoch || 0, epochs), max: epochs };
    else if (steps) bar = { value: Math.min(step || 0, steps), max: steps };
    var best = fixed3(p.best_val_auc);
    return {
      stage: stage ? String(stage) : DASH,
      epoch: epochs ? (epoch || 0) + " / " + epochs : steps ? (step || 0) + " / " + steps : DASH,
      loss: fixed3(p.loss),
      val_auc: fixed3(p.val_auc),
      val_acc: fixed3(p.val_acc),
      best: best !== DASH && isInt(p.best_epoch) && p.best_epoch ? best + " (epoch " + p.best_epoch + ")" : best,
      elapsed: duration(elapsed(run, skew)),
      eta: run.status === "running" ? duration(p.eta_s) : DASH,
      bar: bar
    };
  }

  function init(root) {
    if (!LIVE[root.dataset.status]) return;
    var url = root.dataset.pollUrl;
    var fields = {};
    Array.prototype.forEach.call(document.querySelectorAll("[data-field]"), function (node) {
      fields[node.dataset.field] = node;
    });
    var svg = root.querySelector("svg[data-chart]");
    var tbody = root.querySelector("[data-history-rows]");
    var finished = false;
    var now = Number(root.dataset.now);
    var skew = isFinite(now) && now > 0 ? now - Date.now() : 0;
    var lastChart = null;

    function setText(name, text) {
      var node = fields[name];
      if (node && node.textContent !== text) node.textContent = text;
    }

    function stop(message) {
      finished = true;
      setText("live", message);
    }

    function apply(run) {
      var status = STATUSES[run.status] ? run.status : null;
      if (!status) return;
      if (fields.status) {
        fields.status.textContent = status;
        fields.status.className = "badge badge-lg badge-status-" + status;
      }
      root.dataset.status = status;
      if (!LIVE[status]) {
        // The result (metrics, model link) is rendered by the server: show it, once.
        stop("Finished · loading the result…");
        window.location.replace(window.location.pathname);
        return;
      }
      var n = numbers(run, skew);
      ["stage", "epoch", "loss", "val_auc", "val_acc", "best", "elapsed", "eta"].forEach(function (k) {
        setText(k, n[k]);
      });
      var bar = fields.bar;
      if (bar) {
        if (n.bar) {
          bar.max = n.bar.max;
          bar.value = n.bar.value;
          bar.textContent = n.bar.value + " / " + n.bar.max;
        } else {
          bar.removeAttribute("value");
        }
      }
      // Redraw only on a change, so a tooltip being read is not pulled away every 2 s.
      var p = run.progress || {};
      var length = Array.isArray(p.history) ? p.history.length : 0;
      var key = [length, p.epochs, p.best_epoch].join(",");
      if (key !== lastChart) {
        if (svg) drawChart(svg, p);
        if (tbody) drawHistory(tbody, p);
        lastChart = key;
      }
    }

    function schedule(ms) {
      if (!finished) window.setTimeout(poll, ms);
    }

    function poll() {
      if (finished) return;
      if (document.hidden) {
        schedule(POLL_MS);
        return;
      }
      window.fetch(url, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" }
      }).then(function (response) {
        if (response.status === 401 || response.status === 403) {
          stop("Live updates stopped: sign in again to follow this run.");
          return null;
        }
        if (response.status === 404) {
          stop("Live updates stopped: the run no longer exists.");
          return null;
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      }).then(function (run) {
        if (run === null) return;
        apply(run);
        if (finished) return;
        setText("live", "Live · updates every 2 s");
        schedule(POLL_MS);
      }).catch(function () {
        setText("live", "Connection lost · retrying…");
        schedule(RETRY_MS);
      });
    }

    schedule(POLL_MS);
  }

  function start() {
    Array.prototype.forEach.call(document.querySelectorAll("[data-training-run]"), init);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
