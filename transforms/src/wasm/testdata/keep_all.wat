;; The smallest useful guest, by hand: a filter that keeps every record. It answers in place:
;; the verdicts (all 1) and a zero error count are written over the request it was given.
(module
  (memory (export "memory") 1)
  (global $top (mut i32) (i32.const 1024))
  (func (export "feedline_abi_version") (result i32) (i32.const 1))
  (func (export "alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $top))
    (global.set $top (i32.add (global.get $top) (local.get $len)))
    (if (i32.gt_u (global.get $top) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow (i32.const 16)))))
    (local.get $p))
  (func (export "dealloc") (param i32 i32) (global.set $top (i32.const 1024)))
  (func (export "init") (param i32 i32 i32) (result i64) (i64.const 0))
  (func (export "filter") (param $ptr i32) (param $len i32) (param $v i32) (result i64)
    (local $n i32) (local $i i32)
    (local.set $n (i32.load (local.get $ptr)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (i32.store8 (i32.add (i32.add (local.get $ptr) (i32.const 4)) (local.get $i)) (i32.const 1))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.store (i32.add (i32.add (local.get $ptr) (i32.const 4)) (local.get $n)) (i32.const 0))
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (i32.add (local.get $n) (i32.const 8))))))
