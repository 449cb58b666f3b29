// crypt4gh v1 encryption in the browser (GA4GH crypt4gh 1.0), on libsodium (vendor/libsodium/).
// What the hub's own engine (strongroom/archive/c4gh.py) reads and writes:
//   header  = "crypt4gh" | u32le 1 | u32le packet count | packets
//   packet  = u32le length | u32le 0 (X25519_chacha20_ietf_poly1305) | writer public key[32] | nonce[12]
//             | ChaCha20-Poly1305-IETF(K, payload); K = BLAKE2b-512(X25519(writer_sk, reader_pk) | reader_pk
//             | writer_pk)[:32] (libsodium crypto_kx, the writer being the "server")
//   payload = u32le 0 (data_enc_parameters) | u32le 0 (chacha20_ietf_poly1305) | session key[32]
//   body    = 64 KiB plaintext segments, each sealed as nonce[12] | ciphertext | tag[16]
// Segment nonces are a keyed BLAKE2b of (segment index, segment plaintext) under a random per-upload seed
// (SIV-style, like c4gh.seal_segments): any byte range of the encrypted stream can be computed again,
// identically, from the file, so a failed part is resent without keeping ciphertext, and a nonce never
// repeats for different plaintext under one session key. The writer key pair is fresh per file.
// Works as a plain <script> (window.Crypt4gh) and under node (module.exports), for tests.
(function (root) {
  "use strict";

  var SEGMENT = 65536;
  var NONCE = 12;
  var TAG = 16;
  var CIPHER_SEGMENT = SEGMENT + NONCE + TAG;
  var MAGIC = [0x63, 0x72, 0x79, 0x70, 0x74, 0x34, 0x67, 0x68]; // "crypt4gh"

  function u32le(n) {
    return new Uint8Array([n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff]);
  }

  function concat(parts) {
    var total = 0, i, out, pos = 0;
    for (i = 0; i < parts.length; i++) total += parts[i].length;
    out = new Uint8Array(total);
    for (i = 0; i < parts.length; i++) { out.set(parts[i], pos); pos += parts[i].length; }
    return out;
  }

  function bodySize(plaintextSize) {
    return plaintextSize + Math.ceil(plaintextSize / SEGMENT) * (NONCE + TAG);
  }

  // The hub's key as served by /api/v1/archive/public-key (crypt4gh PEM) → 32 raw bytes.
  function parsePublicKey(sodium, text) {
    var lines = String(text).trim().split(/\r?\n/).map(function (l) { return l.trim(); })
      .filter(function (l) { return l; });
    if (lines.length < 3 || lines[0] !== "-----BEGIN CRYPT4GH PUBLIC KEY-----" ||
        lines[lines.length - 1] !== "-----END CRYPT4GH PUBLIC KEY-----") {
      throw new Error("not a crypt4gh public key");
    }
    var raw = sodium.from_base64(lines.slice(1, -1).join(""), sodium.base64_variants.ORIGINAL);
    if (raw.length !== 32) throw new Error("a crypt4gh public key is 32 bytes");
    return raw;
  }

  // K = BLAKE2b-512(DH | reader_pk | writer_pk)[:32], what crypto_kx_server_session_keys calls sharedTx.
  function sharedKey(sodium, writer, readerPublic) {
    var dh = sodium.crypto_scalarmult(writer.privateKey, readerPublic);
    if (dh.every(function (b) { return b === 0; })) throw new Error("unusable recipient key (low-order point)");
    return sodium.crypto_generichash(64, concat([dh, readerPublic, writer.publicKey]), null).slice(0, 32);
  }

  // A header giving sessionKey to readerPublic; the writer key pair is fresh (ephemeral).
  function makeHeader(sodium, sessionKey, readerPublic) {
    if (sessionKey.length !== 32) throw new Error("a crypt4gh session key is 32 bytes");
    var writer = sodium.crypto_box_keypair(); // an X25519 key pair
    var key = sharedKey(sodium, writer, readerPublic);
    var payload = concat([u32le(0), u32le(0), sessionKey]);
    var nonce = sodium.randombytes_buf(NONCE);
    var sealed = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(payload, null, null, nonce, key);
    var packetBody = concat([u32le(0), writer.publicKey, nonce, sealed]);
    var packet = concat([u32le(4 + packetBody.length), packetBody]);
    sodium.memzero(key);
    sodium.memzero(writer.privateKey);
    return concat([new Uint8Array(MAGIC), u32le(1), u32le(1), packet]);
  }

  // Segments firstIndex, firstIndex + 1, … sealed; plaintext is whole segments (the file's last may be short).
  function sealSegments(sodium, sessionKey, nonceSeed, firstIndex, plaintext) {
    var count = Math.ceil(plaintext.length / SEGMENT);
    var out = new Uint8Array(plaintext.length + count * (NONCE + TAG));
    var index = new Uint8Array(8), view = new DataView(index.buffer);
    for (var i = 0; i < count; i++) {
      var chunk = plaintext.subarray(i * SEGMENT, Math.min((i + 1) * SEGMENT, plaintext.length));
      var n = firstIndex + i;
      view.setUint32(0, n % 0x100000000, true);
      view.setUint32(4, Math.floor(n / 0x100000000), true);
      var state = sodium.crypto_generichash_init(nonceSeed, 16);
      sodium.crypto_generichash_update(state, index);
      sodium.crypto_generichash_update(state, chunk);
      var nonce = sodium.crypto_generichash_final(state, 16).slice(0, NONCE);
      var sealed = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(chunk, null, null, nonce, sessionKey);
      var at = i * CIPHER_SEGMENT;
      out.set(nonce, at);
      out.set(sealed, at + NONCE);
    }
    return out;
  }

  // One file's crypt4gh stream, computable at any byte range: readPlain(start, end) → Promise<Uint8Array>.
  function SealedFile(sodium, readerPublic, plaintextSize, readPlain) {
    this.sodium = sodium;
    this.sessionKey = sodium.randombytes_buf(32);
    this.nonceSeed = sodium.randombytes_buf(32);
    this.header = makeHeader(sodium, this.sessionKey, readerPublic);
    this.plaintextSize = plaintextSize;
    this.size = this.header.length + bodySize(plaintextSize);
    this.readPlain = readPlain;
  }

  SealedFile.prototype.read = function (start, end) {
    var self = this, h = this.header.length;
    var head = start < h ? this.header.subarray(start, Math.min(end, h)) : new Uint8Array(0);
    var bStart = Math.max(start - h, 0), bEnd = Math.max(end - h, 0);
    if (bEnd <= bStart) return Promise.resolve(head.slice());
    var first = Math.floor(bStart / CIPHER_SEGMENT), last = Math.floor((bEnd - 1) / CIPHER_SEGMENT);
    var pStart = first * SEGMENT, pEnd = Math.min((last + 1) * SEGMENT, this.plaintextSize);
    return Promise.resolve(this.readPlain(pStart, pEnd)).then(function (plain) {
      if (plain.length !== pEnd - pStart) throw new Error("the file changed or could not be read");
      var sealed = sealSegments(self.sodium, self.sessionKey, self.nonceSeed, first, plain);
      var offset = first * CIPHER_SEGMENT;
      return concat([head, sealed.subarray(bStart - offset, bEnd - offset)]);
    });
  };

  SealedFile.prototype.forget = function () {
    this.sodium.memzero(this.sessionKey);
    this.sodium.memzero(this.nonceSeed);
  };

  var api = {
    SEGMENT_SIZE: SEGMENT, CIPHER_SEGMENT_SIZE: CIPHER_SEGMENT, bodySize: bodySize,
    parsePublicKey: parsePublicKey, makeHeader: makeHeader, sealSegments: sealSegments, SealedFile: SealedFile
  };
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.Crypt4gh = api;
})(this);
