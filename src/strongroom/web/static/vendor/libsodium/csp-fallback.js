// Loaded between vendor/libsodium/libsodium.js and libsodium-wrappers.js (ours, not libsodium's).
// The hub's CSP allows no 'wasm-unsafe-eval', so libsodium.js cannot compile its WebAssembly and runs
// its asm.js build instead (same functions, pure JavaScript). That fallback replaces every property of
// the module object when it has started, `ready` included, and the original `ready` then never
// settles. The wrappers wait on `ready`: give them one that settles either way.
(function (m) {
  "use strict";
  if (!m) return;
  if (!m.ready) { m.ready = Promise.resolve(); return; } // the fallback already ran: the functions are there
  var original = m.ready, backup = m.useBackupModule;
  m.ready = new Promise(function (resolve, reject) {
    original.then(resolve, function () { /* the fallback decides */ });
    if (typeof backup === "function") {
      m.useBackupModule = function () {
        var started = backup.apply(this, arguments);
        started.then(resolve, reject);
        return started;
      };
    }
  });
})(window.libsodium);
