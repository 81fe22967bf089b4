//! Transactions, as far as Cocoon reads them: who sent the inbound message,
//! its value and body, and whether the computation succeeded. TL-B of
//! block.tlb (tblkch.pdf §4.2 for transactions, §3.1 for messages):
//!
//! ```text
//! transaction$0111 account_addr:bits256 lt:uint64 prev_trans_hash:bits256
//!   prev_trans_lt:uint64 now:uint32 outmsg_cnt:uint15
//!   orig_status:AccountStatus end_status:AccountStatus
//!   ^[ in_msg:(Maybe ^(Message Any)) out_msgs:(HashmapE 15 ^(Message Any)) ]
//!   total_fees:CurrencyCollection state_update:^(HASH_UPDATE Account)
//!   description:^TransactionDescr = Transaction;
//! trans_ord$0000 credit_first:Bool storage_ph:(Maybe TrStoragePhase)
//!   credit_ph:(Maybe TrCreditPhase) compute_ph:TrComputePhase
//!   action:(Maybe ^TrActionPhase) aborted:Bool bounce:(Maybe TrBouncePhase)
//!   destroyed:Bool = TransactionDescr;
//! tr_phase_compute_skipped$0 reason:ComputeSkipReason = TrComputePhase;
//! tr_phase_compute_vm$1 success:Bool msg_state_used:Bool
//!   account_activated:Bool gas_fees:Grams ^[ gas_used:(VarUInteger 7)
//!   gas_limit:(VarUInteger 7) gas_credit:(Maybe (VarUInteger 3)) mode:int8
//!   exit_code:int32 ... ] = TrComputePhase;
//! message$_ {X:Type} info:CommonMsgInfo
//!   init:(Maybe (Either StateInit ^StateInit)) body:(Either X ^X) = Message X;
//! int_msg_info$0 ihr_disabled:Bool bounce:Bool bounced:Bool
//!   src:MsgAddressInt dest:MsgAddressInt value:CurrencyCollection
//!   ihr_fee:Grams fwd_fee:Grams created_lt:uint64 created_at:uint32 = CommonMsgInfo;
//! ext_in_msg_info$10 src:MsgAddressExt dest:MsgAddressInt import_fee:Grams = CommonMsgInfo;
//! ```

use super::{Cell, CellBuilder, CellSlice, TonError};
use crate::settlement::ContractAddress;

/// A transaction's fields Cocoon uses, read from its bag of cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionSummary {
    /// The representation hash of the transaction's root cell: its hash
    /// on chain.
    pub hash: [u8; 32],
    /// The account (hash part; the workchain is not in a transaction).
    pub account: [u8; 32],
    /// Logical time.
    pub lt: u64,
    /// Unix time.
    pub now: u32,
    /// The inbound message, if any.
    pub in_msg: Option<InboundMessage>,
    /// The compute phase ran and succeeded, and the transaction was not
    /// aborted. False for a transaction that is not ordinary (tick-tock,
    /// split, merge, storage).
    pub success: bool,
    /// The compute phase's exit code; -1 when it was skipped or the
    /// transaction is not ordinary.
    pub exit_code: i32,
}

/// The inbound message of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    /// The sender of an internal message; `None` for an external one.
    pub source: Option<ContractAddress>,
    /// Nanoton carried (0 for an external message).
    pub value: u128,
    /// The body's cell hash (an inline body is hashed as the cell made of
    /// the rest of the message cell).
    pub body_hash: [u8; 32],
    /// Whether a bounced message (internal only).
    pub bounced: bool,
}

fn malformed(what: &str, e: TonError) -> TonError {
    TonError::Malformed(format!("transaction: {what}: {e}"))
}

/// Reads a transaction from its root cell.
pub fn parse_transaction(root: &Cell) -> Result<TransactionSummary, TonError> {
    let mut s = root.as_slice();
    let tag = s.load_uint(4).map_err(|e| malformed("tag", e))?;
    if tag != 0b0111 {
        return Err(TonError::Malformed(format!(
            "transaction: tag {tag:04b}, 0111 expected"
        )));
    }
    let account = s.load_uint_wide(256).map_err(|e| malformed("account", e))?;
    let lt = s.load_uint(64).map_err(|e| malformed("lt", e))? as u64;
    s.skip_bits(256 + 64).map_err(|e| malformed("prev", e))?;
    let now = s.load_uint(32).map_err(|e| malformed("now", e))? as u32;
    s.skip_bits(15 + 2 + 2)
        .map_err(|e| malformed("statuses", e))?;
    let msgs = s.load_ref().map_err(|e| malformed("messages", e))?;
    let mut m = msgs.as_slice();
    let in_msg = match m.load_maybe_ref().map_err(|e| malformed("in_msg", e))? {
        None => None,
        Some(c) => Some(parse_inbound(&c)?),
    };
    // total_fees: CurrencyCollection (grams, extra currencies dictionary).
    s.load_coins().map_err(|e| malformed("total_fees", e))?;
    s.load_maybe_ref()
        .map_err(|e| malformed("total_fees extra", e))?;
    s.load_ref().map_err(|e| malformed("state_update", e))?;
    let descr = s.load_ref().map_err(|e| malformed("description", e))?;
    s.end().map_err(|e| malformed("after the description", e))?;
    let (success, exit_code) = parse_description(&descr)?;
    Ok(TransactionSummary {
        hash: root.hash(),
        account,
        lt,
        now,
        in_msg,
        success,
        exit_code,
    })
}

fn parse_inbound(c: &Cell) -> Result<InboundMessage, TonError> {
    let mut s = c.as_slice();
    let (source, value, bounced) = if !s.load_bit().map_err(|e| malformed("in_msg", e))? {
        // int_msg_info$0
        s.skip_bits(1).map_err(|e| malformed("in_msg", e))?;
        s.skip_bits(1).map_err(|e| malformed("in_msg", e))?;
        let bounced = s.load_bit().map_err(|e| malformed("in_msg", e))?;
        let src = s.load_address().map_err(|e| malformed("in_msg src", e))?;
        s.load_address().map_err(|e| malformed("in_msg dest", e))?;
        let value = s.load_coins().map_err(|e| malformed("in_msg value", e))?;
        s.load_maybe_ref()
            .map_err(|e| malformed("in_msg extra currencies", e))?;
        s.load_coins().map_err(|e| malformed("in_msg ihr_fee", e))?;
        s.load_coins().map_err(|e| malformed("in_msg fwd_fee", e))?;
        s.skip_bits(64 + 32).map_err(|e| malformed("in_msg", e))?;
        (src, value, bounced)
    } else {
        if s.load_bit().map_err(|e| malformed("in_msg", e))? {
            return Err(TonError::Malformed(
                "transaction: an outbound external message as the inbound message".into(),
            ));
        }
        // ext_in_msg_info$10: src:MsgAddressExt.
        match s.load_uint(2).map_err(|e| malformed("in_msg src", e))? {
            0b00 => {}
            0b01 => {
                let len = s.load_uint(9).map_err(|e| malformed("in_msg src", e))? as usize;
                s.skip_bits(len).map_err(|e| malformed("in_msg src", e))?;
            }
            t => {
                return Err(TonError::Malformed(format!(
                    "transaction: external source tag {t:02b}"
                )))
            }
        }
        s.load_address().map_err(|e| malformed("in_msg dest", e))?;
        s.load_coins()
            .map_err(|e| malformed("in_msg import_fee", e))?;
        (None, 0, false)
    };
    // init:(Maybe (Either StateInit ^StateInit))
    if s.load_bit().map_err(|e| malformed("in_msg init", e))? {
        if s.load_bit().map_err(|e| malformed("in_msg init", e))? {
            s.load_ref().map_err(|e| malformed("in_msg init", e))?;
        } else {
            skip_state_init(&mut s).map_err(|e| malformed("in_msg init", e))?;
        }
    }
    // body:(Either X ^X)
    let body_hash = if s.load_bit().map_err(|e| malformed("in_msg body", e))? {
        let b = s.load_ref().map_err(|e| malformed("in_msg body", e))?;
        s.end()
            .map_err(|e| malformed("after the body reference", e))?;
        b.hash()
    } else {
        rest_as_cell(&mut s)?.hash()
    };
    Ok(InboundMessage {
        source,
        value,
        body_hash,
        bounced,
    })
}

/// `_ split_depth:(Maybe (## 5)) special:(Maybe TickTock) code:(Maybe ^Cell)
/// data:(Maybe ^Cell) library:(Maybe ^Cell) = StateInit;`
fn skip_state_init(s: &mut CellSlice) -> Result<(), TonError> {
    if s.load_bit()? {
        s.skip_bits(5)?;
    }
    if s.load_bit()? {
        s.skip_bits(2)?;
    }
    for _ in 0..3 {
        s.load_maybe_ref()?;
    }
    Ok(())
}

fn rest_as_cell(s: &mut CellSlice) -> Result<Cell, TonError> {
    let bits = s.remaining_bits();
    let data = s.load_bits(bits)?;
    let mut b = CellBuilder::new();
    b.store_bits(&data, bits)?;
    while s.remaining_refs() > 0 {
        b.store_ref(s.load_ref()?)?;
    }
    Ok(b.build())
}

/// `(success, exit_code)` of a `TransactionDescr`.
fn parse_description(c: &Cell) -> Result<(bool, i32), TonError> {
    let mut s = c.as_slice();
    let kind = s.load_uint(4).map_err(|e| malformed("description", e))?;
    if kind != 0 {
        // Not ordinary: no inbound message to judge.
        return Ok((false, -1));
    }
    s.skip_bits(1).map_err(|e| malformed("credit_first", e))?;
    // storage_ph:(Maybe TrStoragePhase)
    if s.load_bit().map_err(|e| malformed("storage phase", e))? {
        s.load_coins().map_err(|e| malformed("storage phase", e))?;
        if s.load_bit().map_err(|e| malformed("storage phase", e))? {
            s.load_coins().map_err(|e| malformed("storage phase", e))?;
        }
        // AccStatusChange: $0, $10, $11.
        if s.load_bit().map_err(|e| malformed("storage phase", e))? {
            s.skip_bits(1).map_err(|e| malformed("storage phase", e))?;
        }
    }
    // credit_ph:(Maybe TrCreditPhase): due_fees_collected:(Maybe Grams)
    // credit:CurrencyCollection.
    if s.load_bit().map_err(|e| malformed("credit phase", e))? {
        if s.load_bit().map_err(|e| malformed("credit phase", e))? {
            s.load_coins().map_err(|e| malformed("credit phase", e))?;
        }
        s.load_coins().map_err(|e| malformed("credit phase", e))?;
        s.load_maybe_ref()
            .map_err(|e| malformed("credit phase", e))?;
    }
    // compute_ph
    let (vm_success, exit_code) = if s.load_bit().map_err(|e| malformed("compute phase", e))? {
        let success = s.load_bit().map_err(|e| malformed("compute phase", e))?;
        s.skip_bits(2).map_err(|e| malformed("compute phase", e))?;
        s.load_coins()
            .map_err(|e| malformed("compute phase gas fees", e))?;
        let details = s
            .load_ref()
            .map_err(|e| malformed("compute phase details", e))?;
        let mut d = details.as_slice();
        // gas_used, gas_limit: VarUInteger 7 (3-bit length).
        for _ in 0..2 {
            let len = d.load_uint(3).map_err(|e| malformed("gas", e))? as usize;
            d.skip_bits(8 * len).map_err(|e| malformed("gas", e))?;
        }
        // gas_credit: Maybe (VarUInteger 3) (2-bit length).
        if d.load_bit().map_err(|e| malformed("gas credit", e))? {
            let len = d.load_uint(2).map_err(|e| malformed("gas credit", e))? as usize;
            d.skip_bits(8 * len)
                .map_err(|e| malformed("gas credit", e))?;
        }
        d.skip_bits(8).map_err(|e| malformed("mode", e))?;
        let exit = d.load_int(32).map_err(|e| malformed("exit code", e))? as i32;
        (success, exit)
    } else {
        // Skipped: ComputeSkipReason, 2 or 3 bits.
        let r = s.load_uint(2).map_err(|e| malformed("skip reason", e))?;
        if r == 0b11 {
            s.skip_bits(1).map_err(|e| malformed("skip reason", e))?;
        }
        (false, -1)
    };
    // action:(Maybe ^TrActionPhase)
    let action = s
        .load_maybe_ref()
        .map_err(|e| malformed("action phase", e))?;
    let aborted = s.load_bit().map_err(|e| malformed("aborted", e))?;
    // The action phase's own success bit is its first.
    let action_ok = match action {
        None => true,
        Some(a) => a
            .as_slice()
            .load_bit()
            .map_err(|e| malformed("action phase", e))?,
    };
    Ok((vm_success && !aborted && action_ok, exit_code))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transaction the sandbox wrote (a transfer of 5 TON from the
    /// sandbox treasury to an account without code).
    #[test]
    fn sandbox_transfer() {
        use base64ct::Encoding as _;
        let b64 = "te6cckECBQEAAQsAA694Pf1VLmNym0cvy8yMRevMZpFwJVi2jsdSfhukA6DzGoAAAAAAAtxsAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaxbCdgAAAIAQMEAQGgAgCzSAGCV0EWWeL6lAKu7Vp9FlcSOdwsQ/TFCOSXh/WA2kt5ZwAg9/VUuY3KbRy/LzIxF68xmkXAlWLaOx1J+G6QDoPMahQEqBfIAAYII1oAAAAAAD0JAtYthOxAAIJy6y3KPnqFoMsD+BMVP0+dCDM3212rKqBuoCoEQAFgIxYpQvxRlfS+wk6JVM/UmG0oc/ayk4AIJn+CzwM2dKn4+gARDAlASoF8gAEgKmxUpQ==";
        let boc = base64ct::Base64::decode_vec(b64).unwrap();
        let root = Cell::from_boc(&boc).unwrap();
        let t = parse_transaction(&root).unwrap();
        assert_eq!(
            hex::encode(t.account),
            "83dfd552e63729b472fcbcc8c45ebcc6691702558b68ec7527e1ba403a0f31a8"
        );
        assert_eq!(t.lt, 3_000_000);
        let m = t.in_msg.unwrap();
        assert_eq!(m.value, 5_000_000_000);
        assert_eq!(m.source.unwrap().workchain, 0);
        assert!(!m.bounced);
        // No code: the compute phase was skipped (no state).
        assert_eq!((t.success, t.exit_code), (false, -1));
        // The empty body's hash.
        assert_eq!(
            hex::encode(m.body_hash),
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"
        );
        assert_eq!(
            base64ct::Base64::encode_string(&t.hash),
            "YGM6lAOBk3fuR3vjgpmDV9q2fgLoX6x1Wj9Knt4hcyE="
        );
    }
}
