;; A module that speaks ABI version 2: `feedline validate` must refuse it by version.
(module
  (memory (export "memory") 1)
  (func (export "feedline_abi_version") (result i32) (i32.const 2))
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "dealloc") (param i32 i32))
  (func (export "init") (param i32 i32 i32) (result i64) (i64.const 0))
  (func (export "filter") (param i32 i32 i32) (result i64) (i64.const -1)))
