//! OCI interchange: image layouts and archives in and out of the store.
