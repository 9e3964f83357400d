;; A `map` that answers every batch with 5,000 outputs copying record 0 (all flags clear: the
;; input as it is): the host must bound the fan-out instead of making 5,000 copies.
;; The answer lives on page 1, which the host never writes (requests go to `alloc`'s 1024):
;; only its count is stored, the outputs and the error count are the page's zeros.
(module
  (memory (export "memory") 2)
  (func (export "feedline_abi_version") (result i32) (i32.const 1))
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "dealloc") (param i32 i32))
  (func (export "init") (param i32 i32 i32) (result i64) (i64.const 0))
  (func (export "map") (param i32 i32 i32) (result i64)
    (i32.store (i32.const 65536) (i32.const 5000))
    ;; 4 (count) + 5000 * 5 (index, flags) + 4 (no errors) = 25008 bytes
    (i64.or (i64.shl (i64.const 65536) (i64.const 32)) (i64.const 25008))))
