/* The hub's image viewer (dicomweb/templates/dicomweb/viewer.html). Ours, no third-party code.
 *
 * Studies and series come from QIDO-RS, the pictures from WADO-RS /rendered (8-bit PNGs windowed by the
 * hub, ?window=center,width) and the header's windows from /metadata, all under data-base on the hub's own
 * origin, authenticated by the page's session cookie and its X-CSRF-Token header. A PNG is decoded with
 * createImageBitmap and drawn on the canvas (no blob: or data: URLs, so the hub's CSP is unchanged).
 *
 * Windows of one's own (dragging) need the download right: for everyone else the hub renders only the
 * header's windows and the modality's presets (docs/dicomweb.md). Each picture's Strongroom-Custom-Windows
 * header says which applies; without the right a drag leaves the window alone and the menu offers only the
 * windows the hub renders (the presets of the series' modality, data-modality on their options).
 *
 * For tests and assistive tools the canvas carries its state: data-state (empty|loading|rendered|error),
 * data-item ("<SOPInstanceUID>:<frame>" drawn), data-window ("center,width" asked for, or "" for the
 * image's own) and data-draw ("x,y,width,height" of the picture in CSS pixels).
 */
(function () {
  "use strict";
  var root = document.getElementById("viewer");
  if (!root) { return; }
  var base = root.dataset.base, csrf = root.dataset.csrf;
  var $ = function (id) { return document.getElementById(id); };
  var canvas = $("vw-canvas"), ctx = canvas.getContext("2d");
  var studiesList = $("vw-studies"), seriesList = $("vw-series"), moreStudies = $("vw-more-studies");
  var preset = $("vw-preset"), slider = $("vw-slice"), position = $("vw-position"), info = $("vw-info");
  var PAGE = 50, INSTANCES_PAGE = 1000, CACHE_MAX = 96;

  var state = {
    studyOffset: 0, study: null, series: null, items: [], index: 0,
    opening: null,         // the series being opened or open: {key: "study/series", done: its loading promise}
    window: null,          // [center, width] asked for, or null: the image's own (the header's VOI window)
    headerWindow: null,    // the series' header window, where drags start from
    zoom: 1, panX: 0, panY: 0, image: null, drawnKey: null,
    customWindows: null,   // may this reader choose any window? (the hub says so on every picture)
    modality: {}           // series UID → its modality, for the presets that apply
  };
  var cache = new Map();   // key → Promise<ImageBitmap>, oldest first
  var rendering = false, again = false, studyToken = 0, seriesToken = 0;  // tokens: only the latest choice lands

  // -- DICOMweb ------------------------------------------------------------------------------------
  function get(path, accept) {
    return fetch(base + path, {headers: {"X-CSRF-Token": csrf, "Accept": accept}, credentials: "same-origin",
                               cache: "no-store"})
      .then(function (r) {
        if (r.ok) { return r; }
        if (r.status === 404) { throw new Error("not found (or not yours to read)"); }
        return r.json().then(function (problem) { throw new Error(problem.detail || "HTTP " + r.status); },
                             function () { throw new Error("HTTP " + r.status); });
      });
  }
  function dicomJson(path) { return get(path, "application/dicom+json").then(function (r) { return r.json(); }); }
  function value(ds, tag) {
    var e = ds && ds[tag];
    if (!e || !e.Value || !e.Value.length) { return ""; }
    var v = e.Value[0];
    return (v && typeof v === "object") ? (v.Alphabetic || "") : v;
  }
  function windowParam() { return state.window ? state.window[0] + "," + state.window[1] : ""; }
  function frameUrl(item, win) {
    return "/studies/" + item.study + "/series/" + item.series + "/instances/" + item.sop + "/frames/" +
      item.frame + "/rendered" + (win ? "?window=" + encodeURIComponent(win) : "");
  }
  function picture(item, win) {
    var key = item.sop + ":" + item.frame + "|" + win;
    var found = cache.get(key);
    if (found) { cache.delete(key); cache.set(key, found); return found; }
    var p = get(frameUrl(item, win), "image/png")
      .then(function (r) { noteCustomWindows(r.headers.get("Strongroom-Custom-Windows")); return r.blob(); })
      .then(function (b) { return createImageBitmap(b); });
    p.catch(function () { cache.delete(key); });
    cache.set(key, p);
    while (cache.size > CACHE_MAX) { cache.delete(cache.keys().next().value); }
    return p;
  }

  // -- the browser: studies, then series -------------------------------------------------------------
  function button(text, sub, onClick) {
    var li = document.createElement("li"), b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    if (sub) { var s = document.createElement("span"); s.className = "sub"; s.textContent = sub; b.appendChild(s); }
    b.addEventListener("click", function () {
      Array.prototype.forEach.call(li.parentNode.querySelectorAll("button"), function (x) {
        x.removeAttribute("aria-current");
      });
      b.setAttribute("aria-current", "true");
      onClick();
    });
    li.appendChild(b);
    return li;
  }
  function message(list, text) {
    list.textContent = "";
    var li = document.createElement("li"); li.className = "muted"; li.textContent = text; list.appendChild(li);
  }
  function formatDate(da) { return da && da.length === 8 ? da.slice(0, 4) + "-" + da.slice(4, 6) + "-" + da.slice(6) : da; }

  function loadStudies(first) {
    return dicomJson("/studies?limit=" + PAGE + "&offset=" + state.studyOffset).then(function (found) {
      if (state.studyOffset === 0) { studiesList.textContent = ""; }
      if (!found.length && state.studyOffset === 0) { message(studiesList, "No images yet."); }
      found.forEach(function (ds) {
        var uid = value(ds, "0020000D");
        var mods = ds["00080061"] && ds["00080061"].Value ? ds["00080061"].Value.join("/") : "";
        var title = [formatDate(value(ds, "00080020")), mods, value(ds, "00081030")].filter(Boolean).join(" · ");
        var sub = "patient " + value(ds, "00100020") + " · " + value(ds, "00201206") + " series, " +
          value(ds, "00201208") + " images";
        var li = button(title || uid, sub, function () { openStudy(uid, null); });
        li.firstChild.dataset.study = uid;
        studiesList.appendChild(li);
      });
      state.studyOffset += found.length;
      moreStudies.hidden = found.length < PAGE;
      if (first) { return found.length ? value(found[0], "0020000D") : null; }
      return null;
    });
  }

  function mark(list, attr, uid) {
    Array.prototype.forEach.call(list.querySelectorAll("button"), function (b) {
      if (b.dataset[attr] === uid) { b.setAttribute("aria-current", "true"); } else { b.removeAttribute("aria-current"); }
    });
  }

  function openStudy(study, wantedSeries) {
    var token = ++studyToken;
    state.study = study;
    mark(studiesList, "study", study);
    message(seriesList, "Loading…");
    return dicomJson("/studies/" + study + "/series").then(function (found) {
      if (token !== studyToken) { return; }
      seriesList.textContent = "";
      if (!found.length) { message(seriesList, "No series you may read."); return; }
      found.sort(function (a, b) { return (value(a, "00200011") || 0) - (value(b, "00200011") || 0); });
      found.forEach(function (ds) {
        var uid = value(ds, "0020000E");
        var title = [value(ds, "00080060"), "#" + value(ds, "00200011"), value(ds, "0008103E")].filter(Boolean)
          .join(" ");
        var li = button(title, value(ds, "00201209") + " images", function () { openSeries(study, uid); });
        li.firstChild.dataset.series = uid;
        state.modality[uid] = String(value(ds, "00080060") || "").toUpperCase();
        seriesList.appendChild(li);
      });
      var pick = wantedSeries || value(found[0], "0020000E");
      return openSeries(study, pick);
    }).catch(function (err) { message(seriesList, "Could not list the series: " + err.message); });
  }

  function instancesOf(study, series, offset, acc) {
    return dicomJson("/studies/" + study + "/series/" + series + "/instances?limit=" + INSTANCES_PAGE +
                     "&offset=" + offset).then(function (found) {
      acc = acc.concat(found);
      return found.length === INSTANCES_PAGE ? instancesOf(study, series, offset + found.length, acc) : acc;
    });
  }

  function openSeries(study, series) {
    // the series already open (or opening) stays as it is: loading it again would send the reader back to its
    // first image, also after a key pressed meanwhile (End, an arrow)
    var key = study + "/" + series;
    if (state.opening && state.opening.key === key) { mark(seriesList, "series", series); return state.opening.done; }
    var token = ++seriesToken;
    state.series = series;
    mark(seriesList, "series", series);
    offerWindows(state.modality[series] || "", []);
    setState("loading");
    info.textContent = "Loading the series…";
    var opening = {key: key, done: null};
    state.opening = opening;
    opening.done = instancesOf(study, series, 0, []).then(function (found) {
      if (token !== seriesToken) { return; }
      found.sort(function (a, b) { return (value(a, "00200013") || 0) - (value(b, "00200013") || 0); });
      var items = [];
      found.forEach(function (ds) {
        var frames = Number(value(ds, "00280008")) || 1;
        for (var f = 1; f <= frames; f++) {
          items.push({study: study, series: series, sop: value(ds, "00080018"), frame: f,
                      number: value(ds, "00200013"), frames: frames});
        }
      });
      state.items = items;
      state.headerWindow = null;
      slider.max = String(Math.max(items.length, 1));
      slider.disabled = items.length < 2;
      if (!items.length) { setState("empty"); info.textContent = "This series has no images you may read."; return; }
      // the header's windows: the first is where a drag starts (the rendered default is the same window,
      // applied by the hub), the others join the menu
      dicomJson("/studies/" + study + "/series/" + series + "/instances/" + items[0].sop + "/metadata")
        .then(function (meta) {
          if (token !== seriesToken) { return; }
          var windows = headerWindows(meta[0]);
          if (windows.length) { state.headerWindow = windows[0]; }
          offerWindows(state.modality[series] || "", windows.slice(1));
          describe();
        }).catch(function () { /* no header window: drags start from a soft-tissue window */ });
      show(0);
    }).catch(function (err) {
      if (state.opening === opening) { state.opening = null; }  // a click tries again
      setState("error");
      info.textContent = "Could not open the series: " + err.message;
    });
    return opening.done;
  }

  // -- the windows the hub renders --------------------------------------------------------------------
  function headerWindows(ds) {
    var cs = ds && ds["00281050"] && ds["00281050"].Value || [], ws = ds && ds["00281051"] && ds["00281051"].Value || [];
    var out = [];
    for (var i = 0; i < Math.min(cs.length, ws.length, 4); i++) {  // the hub offers the first four pairs
      var c = Number(cs[i]), w = Number(ws[i]);
      if (isFinite(c) && isFinite(w) && w > 0) { out.push([c, w]); }
    }
    return out;
  }
  // The menu for this series: the presets of its modality, and the header's further windows (2, 3…).
  // A window the new series does not offer (another modality's preset, the last series' header window,
  // a drag of one's own without the right to it) goes back to the image's own.
  function offerWindows(modality, extra) {
    Array.prototype.forEach.call(preset.querySelectorAll("option.vw-header"), function (o) { o.remove(); });
    var custom = preset.querySelector('option[value="custom"]');
    extra.forEach(function (win, i) {
      var o = document.createElement("option");
      o.className = "vw-header";
      o.value = win[0] + "," + win[1];
      o.textContent = "From the image, window " + (i + 2) + ": " + win[0] + "/" + win[1];
      preset.insertBefore(o, custom);
    });
    Array.prototype.forEach.call(preset.querySelectorAll("option[data-modality]"), function (o) {
      o.disabled = o.hidden = o.dataset.modality !== modality;
    });
    if (state.window && !offered(windowParam()) && (state.customWindows === false || preset.value !== "custom")) {
      state.window = null;
      preset.value = "";
    }
  }
  function offered(win) {
    return Array.prototype.some.call(preset.options, function (o) { return !o.disabled && o.value === win; });
  }
  function noteCustomWindows(answer) {
    if (!answer) { return; }
    var allowed = answer === "allowed";
    if (allowed !== state.customWindows) { state.customWindows = allowed; describe(); }
  }

  // -- showing a frame -----------------------------------------------------------------------------
  function setState(s) { canvas.dataset.state = s; }

  function describe() {
    var item = state.items[state.index];
    if (!item) { return; }
    var win = state.window || state.headerWindow;
    position.textContent = (state.index + 1) + " / " + state.items.length;
    info.textContent = "Image " + item.number + (item.frames > 1 ? ", frame " + item.frame + " of " + item.frames : "") +
      " · " + (win ? "window " + Math.round(win[0]) + " / " + Math.round(win[1]) : "the image's own window") +
      (state.window ? "" : " (from the image)") + " · zoom " + Math.round(state.zoom * 100) + "%" +
      (state.customWindows === false ? " · the hub's windows only: windows of your own need the download right" : "");
  }

  function show(index) {
    if (!state.items.length) { return; }
    state.index = Math.max(0, Math.min(state.items.length - 1, index));
    slider.value = String(state.index + 1);
    describe();
    if (rendering) { again = true; return; }
    rendering = true;
    setState("loading");
    var item = state.items[state.index], win = windowParam();
    picture(item, win).then(function (bitmap) {
      state.image = bitmap;
      draw();
      canvas.dataset.item = item.sop + ":" + item.frame;
      canvas.dataset.window = win;
      setState("rendered");
      prefetch(win);
    }).catch(function (err) {
      setState("error");
      info.textContent = "Could not show this image: " + err.message;
    }).then(function () {
      rendering = false;
      if (again) { again = false; show(state.index); }  // the slice or window changed while this one loaded
    });
  }

  function prefetch(win) {
    [1, -1, 2].forEach(function (d) {
      var item = state.items[state.index + d];
      if (item) { picture(item, win).catch(function () {}); }
    });
  }

  function draw() {
    var dpr = window.devicePixelRatio || 1;
    var w = Math.round(canvas.clientWidth * dpr), h = Math.round(canvas.clientHeight * dpr);
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, w, h);
    var img = state.image;
    if (!img) { return; }
    var scale = Math.min(w / img.width, h / img.height) * state.zoom;
    var dw = img.width * scale, dh = img.height * scale;
    var dx = Math.round((w - dw) / 2 + state.panX * dpr), dy = Math.round((h - dh) / 2 + state.panY * dpr);
    ctx.imageSmoothingEnabled = scale < 1;  // magnified: every pixel a sharp block, values as rendered
    ctx.drawImage(img, dx, dy, dw, dh);
    canvas.dataset.draw = [dx / dpr, dy / dpr, dw / dpr, dh / dpr].map(function (n) { return n.toFixed(2); }).join(",");
  }

  // -- window, zoom, pan ------------------------------------------------------------------------------
  function setWindow(win, presetValue) {
    state.window = win;
    preset.value = presetValue !== undefined ? presetValue : "custom";
    show(state.index);
  }
  function choosePreset(v) {
    if (v === "") { setWindow(null, ""); return; }
    if (!offered(v)) { return; }  // another modality's preset
    var parts = v.split(",").map(Number);
    setWindow([parts[0], parts[1]], v);
  }
  function zoomBy(f) { state.zoom = Math.max(0.1, Math.min(32, state.zoom * f)); draw(); describe(); }
  function reset() { state.zoom = 1; state.panX = state.panY = 0; setWindow(null, ""); draw(); }

  preset.addEventListener("change", function () { if (preset.value !== "custom") { choosePreset(preset.value); } });
  $("vw-zoom-in").addEventListener("click", function () { zoomBy(1.25); });
  $("vw-zoom-out").addEventListener("click", function () { zoomBy(0.8); });
  $("vw-reset").addEventListener("click", reset);
  slider.addEventListener("input", function () { show(Number(slider.value) - 1); });
  moreStudies.addEventListener("click", function () { loadStudies(false); });

  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    if (e.ctrlKey || e.metaKey) { zoomBy(e.deltaY < 0 ? 1.1 : 1 / 1.1); return; }
    if (e.deltaY) { show(state.index + (e.deltaY > 0 ? 1 : -1)); }
  }, {passive: false});
  canvas.addEventListener("contextmenu", function (e) { e.preventDefault(); });

  var drag = null;
  canvas.addEventListener("pointerdown", function (e) {
    canvas.focus();
    var pan = e.shiftKey || e.button === 1 || e.button === 2;
    if (!pan && state.customWindows === false) { describe(); return; }  // the hub's windows only: the menu
    var start = state.window || state.headerWindow || [40, 400];
    drag = {pan: pan, x: e.clientX, y: e.clientY, c: start[0], w: start[1], px: state.panX, py: state.panY};
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", function (e) {
    if (!drag) { return; }
    var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (drag.pan) { state.panX = drag.px + dx; state.panY = drag.py + dy; draw(); return; }
    if (!dx && !dy) { return; }
    var step = Math.max(drag.w / 256, 0.5);  // a full sweep of the picture changes the window by about its width
    setWindow([Math.round(drag.c + dy * step), Math.max(1, Math.round(drag.w + dx * step))]);
  });
  function endDrag() { drag = null; }
  canvas.addEventListener("pointerup", endDrag);
  canvas.addEventListener("pointercancel", endDrag);

  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (e.altKey || e.ctrlKey || e.metaKey || (t && /^(INPUT|SELECT|TEXTAREA)$/.test(t.tagName) &&
                                               t !== slider)) { return; }  // typing in a field is not a command
    if (t === slider && /^Arrow|^Page|^Home$|^End$/.test(e.key)) { return; }  // the slider moves itself
    var k = e.key, handled = true;
    if (k === "ArrowDown" || k === "ArrowRight" || k === "PageDown" || k === "j") { show(state.index + 1); }
    else if (k === "ArrowUp" || k === "ArrowLeft" || k === "PageUp" || k === "k") { show(state.index - 1); }
    else if (k === "Home") { show(0); }
    else if (k === "End") { show(state.items.length - 1); }
    else if (k >= "1" && k <= "5" && k.length === 1) { choosePreset(preset.options[Number(k) - 1].value); }
    else if (k === "+" || k === "=") { zoomBy(1.25); }
    else if (k === "-") { zoomBy(0.8); }
    else if (k === "0" || k === "r") { reset(); }
    else { handled = false; }
    if (handled) { e.preventDefault(); }
  });
  window.addEventListener("resize", draw);

  // -- start: the study and series asked for, or the first of each ------------------------------------
  loadStudies(true).then(function (first) {
    var study = root.dataset.study || first;
    if (study) { return openStudy(study, root.dataset.series || null); }
    setState("empty");
    info.textContent = "No images to show yet.";
  }).catch(function (err) {
    message(studiesList, "Could not list the studies: " + err.message);
    setState("error");
  });
}());
