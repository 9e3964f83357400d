;; A module built for WASI (it imports fd_write): refused, transforms get no WASI.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "feedline_abi_version") (result i32) (i32.const 1))
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "dealloc") (param i32 i32))
  (func (export "init") (param i32 i32 i32) (result i64) (i64.const 0))
  (func (export "filter") (param i32 i32 i32) (result i64) (i64.const -1)))
