//! The status codes of gRPC and `google.rpc.Status` (the same numbers), so what the
//! execution client acts on is pochi's own type and tonic stays behind the gRPC facade.

/// A gRPC / `google.rpc` status code. Its `Debug` name is the code's name
/// (`FailedPrecondition`), as messages show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Ok,
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

/// The codes in the order of their numbers (0 to 16).
const BY_NUMBER: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

impl Code {
    /// The code with this number; a number gRPC does not define is `Unknown`, as gRPC
    /// reads it.
    pub fn from_number(number: i32) -> Code {
        usize::try_from(number)
            .ok()
            .and_then(|index| BY_NUMBER.get(index))
            .copied()
            .unwrap_or(Code::Unknown)
    }

    /// Its number.
    pub fn number(self) -> i32 {
        BY_NUMBER.iter().position(|code| *code == self).unwrap_or(2) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::Code;

    /// pochi's codes are gRPC's, number for number and name for name (tonic's `Code` is
    /// the peer: the facade converts through the number).
    #[test]
    fn codes_are_grpcs_number_for_number_and_name_for_name() {
        for number in -1..=17 {
            let ours = Code::from_number(number);
            let tonics = tonic::Code::from(number);
            assert_eq!(format!("{ours:?}"), format!("{tonics:?}"), "{number}");
            if (0..=16).contains(&number) {
                assert_eq!(ours.number(), number);
            }
        }
    }
}
