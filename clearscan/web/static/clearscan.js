/* ClearScan pages: progressive enhancement only. Loaded as a static file (CSP: script-src 'self');
   dynamic values come from data-* attributes and are applied through the CSSOM. */
(function () {
  "use strict";

  function all(selector, root) {
    return Array.prototype.slice.call((root || document).querySelectorAll(selector));
  }

  /* Heatmap overlay: data-box = "x0,y0,x1,y1" in original image pixels (the region the model
     saw), data-image-width/height = the image size. Percentages keep it aligned at any zoom. */
  function placeHeatmap(img) {
    var box = (img.dataset.box || "").split(",").map(Number);
    var w = Number(img.dataset.imageWidth);
    var h = Number(img.dataset.imageHeight);
    var valid = box.length === 4 && box.every(isFinite) && w > 0 && h > 0 &&
      box[2] > box[0] && box[3] > box[1];
    if (!valid) {
      img.hidden = true;
      return false;
    }
    img.style.left = (box[0] / w) * 100 + "%";
    img.style.top = (box[1] / h) * 100 + "%";
    img.style.width = ((box[2] - box[0]) / w) * 100 + "%";
    img.style.height = ((box[3] - box[1]) / h) * 100 + "%";
    img.classList.add("is-placed");
    return true;
  }

  /* An overlay's opacity follows its slider (0-100), shown in its output element. */
  function bindOpacity(el, slider, output) {
    if (!slider) return;
    var set = function () {
      var value = Math.max(0, Math.min(100, Number(slider.value)));
      el.style.opacity = String(value / 100);
      if (output) output.textContent = value + "%";
    };
    slider.addEventListener("input", set);
    slider.addEventListener("change", set);
    set();
  }

  /* Segmentation overlay: the label map (a grayscale PNG whose values index the classes, at the
     image's own resolution) drawn on a canvas of the image's size laid over the preview, so it
     stays aligned at any zoom; class i takes the i-th colour of data-palette; fill or outline. */
  function hexColour(hex) {
    var n = parseInt(String(hex).replace("#", ""), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }

  function drawMask(canvas, labels, outline) {
    var w = canvas.width, h = canvas.height;
    var palette = (canvas.dataset.palette || "").split(",").filter(Boolean).map(hexColour);
    var ctx = canvas.getContext("2d");
    var out = ctx.createImageData(w, h);
    var px = out.data;
    for (var y = 0; y < h; y++) {
      for (var x = 0; x < w; x++) {
        var i = y * w + x;
        var v = labels[i];
        if (!v || v > palette.length) continue;
        if (outline) {
          var edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
            labels[i - 1] !== v || labels[i + 1] !== v || labels[i - w] !== v || labels[i + w] !== v;
          if (!edge) continue;
        }
        var c = palette[v - 1];
        px[4 * i] = c[0];
        px[4 * i + 1] = c[1];
        px[4 * i + 2] = c[2];
        px[4 * i + 3] = 255;
      }
    }
    ctx.putImageData(out, 0, 0);
  }

  function initMask(viewer) {
    var canvas = viewer.querySelector("[data-mask]");
    if (!canvas) return;
    var toggle = viewer.querySelector("[data-mask-toggle]");
    var outline = viewer.querySelector("[data-mask-outline]");
    var slider = viewer.querySelector("[data-mask-opacity]");
    var output = viewer.querySelector("[data-mask-opacity-value]");
    all("[data-swatch]", viewer).forEach(function (s) {
      s.style.backgroundColor = s.dataset.swatch;
    });
    var labels = null;
    var img = new Image();
    img.addEventListener("load", function () {
      if (img.naturalWidth !== canvas.width || img.naturalHeight !== canvas.height) {
        canvas.hidden = true;  // never draw a map that does not match the image
        return;
      }
      var scratch = document.createElement("canvas");
      scratch.width = canvas.width;
      scratch.height = canvas.height;
      var sctx = scratch.getContext("2d");
      sctx.drawImage(img, 0, 0);
      var rgba = sctx.getImageData(0, 0, scratch.width, scratch.height).data;
      labels = new Uint8Array(scratch.width * scratch.height);
      for (var i = 0; i < labels.length; i++) labels[i] = rgba[4 * i];
      drawMask(canvas, labels, outline && outline.checked);
      canvas.classList.add("is-placed");
      canvas.dataset.drawn = outline && outline.checked ? "outline" : "fill";
    });
    img.src = canvas.dataset.maskSrc;
    bindOpacity(canvas, slider, output);
    if (toggle) {
      toggle.addEventListener("change", function () {
        canvas.classList.toggle("is-hidden", !toggle.checked);
      });
    }
    if (outline) {
      outline.addEventListener("change", function () {
        if (!labels) return;
        drawMask(canvas, labels, outline.checked);
        canvas.dataset.drawn = outline.checked ? "outline" : "fill";
      });
    }
  }

  function initViewer(viewer) {
    initMask(viewer);
    var preview = viewer.querySelector("[data-preview]");
    var heat = viewer.querySelector("[data-heatmap]");
    var slider = viewer.querySelector("[data-opacity]");
    var output = viewer.querySelector("[data-opacity-value]");
    var toggle = viewer.querySelector("[data-heatmap-toggle]");

    if (heat && placeHeatmap(heat)) {
      bindOpacity(heat, slider, output);
      if (toggle) {
        toggle.addEventListener("change", function () {
          heat.classList.toggle("is-hidden", !toggle.checked);
          if (slider) slider.disabled = !toggle.checked;
        });
      }
    }

    if (preview) {
      preview.addEventListener("load", function () {
        viewer.classList.remove("is-loading", "is-error");
      });
      preview.addEventListener("error", function () {
        viewer.classList.remove("is-loading");
        viewer.classList.add("is-error");
      });
    }

    var buttons = all("[data-preset]", viewer);
    buttons.forEach(function (button) {
      button.addEventListener("click", function () {
        var name = button.dataset.preset;
        var base = preview.dataset.previewBase;
        var next = name === "default" ? base : base + "?preset=" + encodeURIComponent(name);
        if (preview.getAttribute("src") !== next) {
          viewer.classList.add("is-loading");
          preview.src = next;
        }
        buttons.forEach(function (b) {
          b.setAttribute("aria-pressed", b === button ? "true" : "false");
        });
      });
    });
  }

  /* Review form: the correct-label select is only relevant (and required) when disagreeing. */
  function initReviewForm(form) {
    var wrap = form.querySelector("[data-correct-label]");
    if (!wrap) return;
    var select = wrap.querySelector("select");
    var update = function () {
      var checked = form.querySelector("input[name=verdict]:checked");
      var disagree = !!checked && checked.value === "disagree";
      wrap.hidden = !disagree;
      select.disabled = !disagree;
      select.required = disagree;
    };
    all("input[name=verdict]", form).forEach(function (radio) {
      radio.addEventListener("change", update);
    });
    update();
  }

  /* New analysis: intended-use note of the chosen model, chosen files, drag and drop. */
  function initAnalyze() {
    var select = document.querySelector("[data-model-select]");
    if (select) {
      var showNote = function () {
        all("[data-model-note]").forEach(function (note) {
          note.hidden = note.dataset.modelNote !== select.value;
        });
      };
      select.addEventListener("change", showNote);
      showNote();
    }
    var input = document.querySelector("input.file-input");
    var list = document.getElementById("file-list");
    var zone = document.querySelector("[data-dropzone]");
    if (!input || !list) return;
    var showFiles = function () {
      list.textContent = "";
      Array.prototype.forEach.call(input.files || [], function (file) {
        var item = document.createElement("li");
        var name = document.createElement("span");
        name.className = "file-name";
        name.textContent = file.name || "(unnamed)";
        var size = document.createElement("span");
        size.className = "muted small";
        size.textContent = formatSize(file.size);
        item.appendChild(name);
        item.appendChild(size);
        list.appendChild(item);
      });
      if (zone) zone.classList.toggle("has-files", (input.files || []).length > 0);
    };
    input.addEventListener("change", showFiles);
    if (zone) {
      ["dragenter", "dragover"].forEach(function (type) {
        zone.addEventListener(type, function (event) {
          event.preventDefault();
          zone.classList.add("is-dragging");
        });
      });
      ["dragleave", "drop"].forEach(function (type) {
        zone.addEventListener(type, function () {
          zone.classList.remove("is-dragging");
        });
      });
      zone.addEventListener("drop", function (event) {
        event.preventDefault();
        if (event.dataTransfer && event.dataTransfer.files.length) {
          input.files = event.dataTransfer.files;
          showFiles();
        }
      });
    }
    showFiles();
  }

  function formatSize(bytes) {
    if (bytes < 1024) return bytes + " B";
    if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(1) + " KB";
    return (bytes / 1024 / 1024).toFixed(1) + " MB";
  }

  /* Long-running submits (analysis, sign-in): show progress and avoid double submission. */
  function initBusyForms() {
    all("form[data-busy-text]").forEach(function (form) {
      form.addEventListener("submit", function () {
        var button = form.querySelector("button[type=submit]");
        if (!button) return;
        button.dataset.label = button.textContent;
        button.textContent = form.dataset.busyText;
        button.classList.add("is-busy");
        window.setTimeout(function () {
          button.disabled = true;
        }, 0);
      });
    });
    // Coming back with the browser's back button restores the page from cache: reset buttons.
    window.addEventListener("pageshow", function () {
      all("button.is-busy").forEach(function (button) {
        button.disabled = false;
        button.classList.remove("is-busy");
        if (button.dataset.label) button.textContent = button.dataset.label;
      });
    });
  }

  function initConfirm() {
    all("[data-confirm]").forEach(function (el) {
      el.addEventListener("click", function (event) {
        if (!window.confirm(el.dataset.confirm)) event.preventDefault();
      });
    });
  }

  function init() {
    all("[data-viewer]").forEach(initViewer);
    all("[data-review-form]").forEach(initReviewForm);
    initAnalyze();
    initBusyForms();
    initConfirm();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
