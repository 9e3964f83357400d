;; Speaks ABI v1 at start-up, then answers every batch with bytes that are not an answer
;; (a count of 99 verdicts): every call is a protocol failure, and the host must survive it.
(module
  (memory (export "memory") 1)
  (data (i32.const 16) "\63\00\00\00")
  (func (export "feedline_abi_version") (result i32) (i32.const 1))
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "dealloc") (param i32 i32))
  (func (export "init") (param i32 i32 i32) (result i64) (i64.const 0))
  (func (export "filter") (param i32 i32 i32) (result i64)
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 4))))
