// The data page's upload: files of any size, encrypted here with crypt4gh to the hub's archive key
// (crypt4gh.js) before a byte leaves the browser, then sent in parts through the same resumable API
// as `strongroom upload` (/api/v1/projects/{slug}/uploads, /api/v1/uploads/{id}/parts/{n}), with the
// page's session and its CSRF token in X-CSRF-Token. A failed part is retried; if it keeps failing,
// "Resume" asks the hub which parts it has and sends only the rest. Resuming works while the page
// stays open (the encryption key lives only in this page); after a reload, start the file again.
// Without JavaScript, or if libsodium cannot start, the form posts small files as before.
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  if (!form || !window.sodium || !window.Crypt4gh) return;
  var input = document.getElementById("upload-file");
  var slug = form.getAttribute("data-project");
  var csrf = form.querySelector("input[name=csrf_token]").value;
  var bar = document.getElementById("upload-progress");
  var status = document.getElementById("upload-status");
  var resume = document.getElementById("upload-resume");
  var button = form.querySelector("button[type=submit]");
  var ATTEMPTS = 5;
  var pending = null; // what "Resume" continues: {jobs, index}
  var sodiumReady = window.sodium.ready;

  function say(text, isError) {
    status.textContent = text;
    status.className = isError ? "error" : "muted";
  }

  function problem(xhrOrResponse, body) {
    try {
      var detail = JSON.parse(body).detail;
      if (detail) return xhrOrResponse.status + ": " + detail;
    } catch (e) { /* not JSON */ }
    return "the hub answered " + xhrOrResponse.status;
  }

  function api(method, path, body) {
    var headers = {"X-CSRF-Token": csrf, "Accept": "application/json"};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(path, {method: method, headers: headers, credentials: "same-origin",
                        body: body === undefined ? undefined : JSON.stringify(body)})
      .then(function (r) {
        return r.text().then(function (text) {
          if (!r.ok) { var e = new Error(problem(r, text)); e.status = r.status; throw e; }
          return text ? JSON.parse(text) : null;
        });
      });
  }

  // One part by XHR (fetch reports no upload progress); onBytes(n) as the browser sends them.
  function putPart(uploadId, number, data, onBytes) {
    return new Promise(function (resolve, reject) {
      var xhr = new XMLHttpRequest();
      var reported = 0;
      xhr.open("PUT", "/api/v1/uploads/" + encodeURIComponent(uploadId) + "/parts/" + number);
      xhr.setRequestHeader("X-CSRF-Token", csrf);
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.onprogress = function (ev) { onBytes(ev.loaded - reported); reported = ev.loaded; };
      xhr.onload = function () {
        if (xhr.status >= 200 && xhr.status < 300) { onBytes(data.length - reported); resolve(); return; }
        onBytes(-reported);
        var e = new Error(problem(xhr, xhr.responseText)); e.status = xhr.status; reject(e);
      };
      xhr.onerror = function () { onBytes(-reported); reject(new Error("the connection to the hub broke")); };
      xhr.send(data);
    });
  }

  function wait(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }

  function retried(fn) {
    var attempt = 0;
    function go() {
      attempt += 1;
      return fn().catch(function (err) {
        var retryable = !err.status || err.status >= 500 || err.status === 408 || err.status === 429;
        if (!retryable || attempt >= ATTEMPTS) throw err;
        return wait(Math.min(500 * Math.pow(2, attempt - 1), 8000)).then(go);
      });
    }
    return go();
  }

  function readPlain(file) {
    return function (start, end) {
      return file.slice(start, end).arrayBuffer().then(function (buf) { return new Uint8Array(buf); });
    };
  }

  function uploadOne(job, progress) {
    var sealed = job.sealed;
    var started = job.uploadId ? api("GET", "/api/v1/uploads/" + encodeURIComponent(job.uploadId))
      : api("POST", "/api/v1/projects/" + encodeURIComponent(slug) + "/uploads",
            {path: job.path, size: sealed.size});
    return started.then(function (info) {
      job.uploadId = info.id;
      var partSize = info.part_size, have = {};
      info.parts.forEach(function (p) { have[p.number] = true; });
      var count = Math.ceil(sealed.size / partSize), chain = Promise.resolve();
      for (var n = 1; n <= count; n++) {
        (function (number) {
          var start = (number - 1) * partSize, end = Math.min(start + partSize, sealed.size);
          if (have[number]) { progress(end - start); return; }
          chain = chain.then(function () {
            say("Encrypting and sending " + job.path + " (part " + number + " of " + count + ")…");
            return sealed.read(start, end).then(function (data) {
              return retried(function () { return putPart(job.uploadId, number, data, progress); });
            });
          });
        })(n);
      }
      return chain;
    }).then(function () {
      return retried(function () {
        return api("POST", "/api/v1/uploads/" + encodeURIComponent(job.uploadId) + "/complete", {});
      });
    }).then(function () { job.done = true; sealed.forget(); });
  }

  function run() {
    var jobs = pending.jobs, total = 0, sent = 0;
    jobs.forEach(function (j) { total += j.sealed.size; });
    bar.max = total;
    bar.value = 0;
    bar.hidden = false;
    resume.hidden = true;
    button.disabled = true;
    function progress(n) { sent += n; bar.value = Math.min(sent, total); }
    var chain = Promise.resolve();
    jobs.forEach(function (job) {
      chain = chain.then(function () {
        if (job.done) { progress(job.sealed.size); return; }
        return uploadOne(job, progress);
      });
    });
    return chain.then(function () {
      pending = null;
      bar.value = total;
      say("Uploaded " + jobs.length + (jobs.length === 1 ? " file" : " files") +
          ", encrypted in this browser. The archive checks them next.");
      window.location.assign("/projects/" + encodeURIComponent(slug) + "/data?uploaded=" + jobs.length + "#files");
    }).catch(function (err) {
      button.disabled = false;
      resume.hidden = false;
      say("The upload stopped: " + err.message + ". Resume sends only the parts the hub does not have " +
          "(while this page stays open).", true);
    });
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var files = Array.prototype.slice.call(input.files || []);
    if (!files.length) { say("Choose a file first.", true); return; }
    var empty = files.filter(function (f) { return f.size === 0; });
    if (empty.length) { say(empty[0].name + " is empty; nothing to upload.", true); return; }
    button.disabled = true;
    say("Preparing encryption…");
    sodiumReady.then(function () {
      return fetch("/api/v1/archive/public-key", {credentials: "same-origin"}).then(function (r) {
        if (!r.ok) throw new Error("cannot fetch the archive key (" + r.status + ")");
        return r.text();
      });
    }).then(function (pem) {
      var hubKey = window.Crypt4gh.parsePublicKey(window.sodium, pem);
      pending = {jobs: files.map(function (f) {
        return {path: f.webkitRelativePath || f.name, done: false, uploadId: null,
                sealed: new window.Crypt4gh.SealedFile(window.sodium, hubKey, f.size, readPlain(f))};
      })};
      return run();
    }).catch(function (err) {
      button.disabled = false;
      say("The upload could not start: " + err.message, true);
    });
  });

  resume.addEventListener("click", function () { if (pending) run(); });
  // Enhanced: several files at once, of any size (the label says so).
  input.multiple = true;
  var label = form.querySelector("label[data-js-label]");
  label.textContent = label.getAttribute("data-js-label");
  form.classList.add("js-upload");
})();
