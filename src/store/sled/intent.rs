//! The intent record: every write of a batch in one value, so a batch is
//! atomic across a crash (see the module doc of [`super`]).

use super::*;

pub(super) const INTENT: &[u8] = b"intent";

/// One pending write: a value, or a removal.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Write {
    pub(super) tree: u8,
    pub(super) key: Vec<u8>,
    pub(super) value: Option<Vec<u8>>,
}

/// The intent record: every write of a batch, length-prefixed.
pub(super) fn encode_intent(writes: &[Write]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        writes
            .iter()
            .map(|w| 10 + w.key.len() + w.value.as_ref().map_or(0, Vec::len))
            .sum(),
    );
    for w in writes {
        out.push(w.tree);
        out.extend_from_slice(&(w.key.len() as u32).to_be_bytes());
        out.extend_from_slice(&w.key);
        match &w.value {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.push(0),
        }
    }
    out
}

pub(super) fn decode_intent(mut b: &[u8]) -> StoreResult<Vec<Write>> {
    pub(super) fn take<'a>(b: &mut &'a [u8], n: usize) -> StoreResult<&'a [u8]> {
        if b.len() < n {
            return Err(StoreError::Corrupt("truncated intent record".into()));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    pub(super) fn len(b: &mut &[u8]) -> StoreResult<usize> {
        let raw = take(b, 4)?;
        Ok(u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize)
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let tree = take(&mut b, 1)?[0];
        if tree as usize >= TREES.len() {
            return Err(StoreError::Corrupt("intent names an unknown tree".into()));
        }
        let n = len(&mut b)?;
        let key = take(&mut b, n)?.to_vec();
        let value = match take(&mut b, 1)?[0] {
            0 => None,
            1 => {
                let n = len(&mut b)?;
                Some(take(&mut b, n)?.to_vec())
            }
            _ => return Err(StoreError::Corrupt("bad intent record".into())),
        };
        out.push(Write { tree, key, value });
    }
    Ok(out)
}

pub(super) fn apply_writes(trees: &Trees, writes: &[Write]) -> StoreResult<()> {
    for w in writes {
        let tree = &trees.trees[w.tree as usize];
        match &w.value {
            Some(v) => tree.insert(&w.key, v.as_slice()).map(drop),
            None => tree.remove(&w.key).map(drop),
        }
        .map_err(backend)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intent_records_round_trip() {
        let writes = vec![
            Write {
                tree: T::Users as u8,
                key: b"k1".to_vec(),
                value: Some(b"v1".to_vec()),
            },
            Write {
                tree: T::Outbox as u8,
                key: vec![],
                value: None,
            },
            Write {
                tree: T::Emails as u8,
                key: vec![0; 300],
                value: Some(vec![]),
            },
        ];
        let enc = encode_intent(&writes);
        assert_eq!(decode_intent(&enc).unwrap(), writes);
        for cut in 1..enc.len() {
            assert_ne!(decode_intent(&enc[..cut]).ok(), Some(writes.clone()));
        }
        assert!(decode_intent(&[42, 0, 0, 0, 0, 0]).is_err());
    }
}
