"""Object storage for the encrypted archive: one small protocol, two backends.

Modules: ``base`` (limits, value types, the :class:`~.base.Storage` protocol, key rules), ``errors``,
``local`` (+ ``durable``, its crash-safe file steps), ``s3`` (+ ``s3_streams``, its reader and writer) and
``config`` (:class:`~.config.StorageSettings`, the one configuration, and ``storage_from_settings``).
Import from those modules; this package re-exports nothing.

* :class:`LocalStorage` - the embedded default, a directory tree. Every write lands in a temp file in a
  hidden staging directory on the same filesystem, is fsynced, and is published with one ``os.replace``
  (then the directory is fsynced), so a key is either absent or complete.
* :class:`S3Storage` - any S3-compatible server (Ceph RGW, SeaweedFS, MinIO, AWS) through boto3. Objects up
  to one part are one ``PutObject``; larger ones are multipart uploads, which S3 only makes visible on
  ``CompleteMultipartUpload`` and which are aborted on failure.

Both backends have the same semantics, checked by the same tests:

* keys are ``/``-separated relative paths, validated identically on both (:func:`~.base.validate_key`);
* nothing written is visible before ``commit()`` / ``complete_multipart()``; an aborted, failed or crashed
  writer leaves no object (at most invisible garbage: see ``cleanup_incomplete``);
* writers stream with flat memory (the S3 writer holds at most one part), readers stream (ranged GET on S3);
* resumable multipart uploads (``begin_multipart`` ... ``complete_multipart``) survive the process that
  started them: the upload id is all a new process needs.

Integrity: checksums are NEVER taken from S3 ETags. An ETag is an opaque token (a multipart ETag is not an
MD5 at all, encrypted or compressed backends change it, and servers differ); the archive computes its own
content digests while streaming and stores them in its database. The only use of ETags here is as the
opaque part tokens ``CompleteMultipartUpload`` requires and as an ``If-Match`` guard when a read resumes.
Uploads do send ``Content-MD5`` so the *server* rejects a body corrupted in transit (``BadDigest``).

This package is framework free (no FastAPI/SQLAlchemy). Errors are :class:`StorageError` subclasses.
"""
