//! What an execution's `google.longrunning.Operation`s say: the stage in their
//! `ExecuteOperationMetadata`, and, once done, how the execution ended (its
//! `ExecuteResponse`, or an error status), with the blobs a FAILED_PRECONDITION's
//! `google.rpc.PreconditionFailure` names as MISSING.

use bazel_remote_apis::google::longrunning::{Operation, operation};
use bazel_remote_apis::google::protobuf::Any;
use bazel_remote_apis::google::rpc;
use prost::Message;

use crate::remote::digest::Digest;
use crate::remote::proto as re;
use crate::remote::status::Code;

const METADATA: &str = "build.bazel.remote.execution.v2.ExecuteOperationMetadata";
const RESPONSE: &str = "build.bazel.remote.execution.v2.ExecuteResponse";
const PRECONDITION_FAILURE: &str = "google.rpc.PreconditionFailure";

/// `google.rpc.PreconditionFailure` (google/rpc/error_details.proto), which the REAPI
/// crate does not ship: the two messages pochi reads, with their field numbers.
#[derive(Clone, PartialEq, Message)]
struct PreconditionFailure {
    #[prost(message, repeated, tag = "1")]
    violations: Vec<Violation>,
}

#[derive(Clone, PartialEq, Message)]
struct Violation {
    #[prost(string, tag = "1")]
    r#type: String,
    #[prost(string, tag = "2")]
    subject: String,
    #[prost(string, tag = "3")]
    description: String,
}

/// Where an operation is, as far as pochi cares (CACHE_CHECK counts as queued).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    Queued,
    Executing,
    Completed,
}

/// The stage an operation's metadata names; `None` when it carries no readable metadata.
pub(crate) fn stage(operation: &Operation) -> Option<Stage> {
    let metadata = operation.metadata.as_ref()?;
    if type_name(metadata) != METADATA {
        return None;
    }
    let metadata = re::ExecuteOperationMetadata::decode(metadata.value.as_slice()).ok()?;
    use re::execution_stage::Value;
    Some(match Value::try_from(metadata.stage).ok()? {
        Value::Unknown | Value::CacheCheck | Value::Queued => Stage::Queued,
        Value::Executing => Stage::Executing,
        Value::Completed => Stage::Completed,
    })
}

/// A status other than OK, reduced to what pochi acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: Code,
    pub(crate) message: String,
    /// The blobs its PreconditionFailure names as MISSING.
    pub(crate) missing: Vec<Digest>,
}

impl Refusal {
    /// From a `google.rpc.Status` inside an Operation or ExecuteResponse.
    pub(crate) fn of_status(status: &rpc::Status) -> Refusal {
        Refusal {
            code: Code::from_number(status.code),
            message: status.message.clone(),
            missing: missing_blobs(&status.details),
        }
    }

    /// BuildGrid ends a job queued past its own limit with UNAVAILABLE "Operation has been
    /// queued for too long".
    fn queued_too_long(&self) -> bool {
        self.code == Code::Unavailable
            && self
                .message
                .to_ascii_lowercase()
                .contains("queued for too long")
    }
}

/// How a finished execution ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// The action ran (its exit code is in the result) or its result came from the cache.
    Ran(Box<re::ExecuteResponse>),
    /// FAILED_PRECONDITION: the server lacks these blobs.
    Missing(Vec<Digest>),
    /// The server gave up waiting for a worker.
    Unschedulable,
    /// Any other status; the response, when there is one, may carry the logs.
    Refused(Refusal, Option<Box<re::ExecuteResponse>>),
}

/// What is malformed in a done operation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum MalformedOperation {
    #[error("a done operation with neither a response nor an error")]
    Empty,
    #[error("an operation response of type `{0}`")]
    OtherType(String),
    #[error("an undecodable ExecuteResponse ({0})")]
    Undecodable(String),
}

/// The verdict of a done operation; `Err` says what is malformed.
pub(crate) fn verdict(operation: &Operation) -> Result<Verdict, MalformedOperation> {
    match &operation.result {
        None => Err(MalformedOperation::Empty),
        Some(operation::Result::Error(status)) => Ok(judge(Refusal::of_status(status), None)),
        Some(operation::Result::Response(any)) => {
            if type_name(any) != RESPONSE {
                return Err(MalformedOperation::OtherType(any.type_url.clone()));
            }
            let response = re::ExecuteResponse::decode(any.value.as_slice())
                .map_err(|e| MalformedOperation::Undecodable(e.to_string()))?;
            match &response.status {
                Some(status) if status.code != Code::Ok.number() => {
                    Ok(judge(Refusal::of_status(status), Some(Box::new(response))))
                }
                _ => Ok(Verdict::Ran(Box::new(response))),
            }
        }
    }
}

/// What a refusal means for the client.
pub(crate) fn judge(refusal: Refusal, response: Option<Box<re::ExecuteResponse>>) -> Verdict {
    if refusal.code == Code::FailedPrecondition && !refusal.missing.is_empty() {
        Verdict::Missing(refusal.missing)
    } else if refusal.queued_too_long() {
        Verdict::Unschedulable
    } else {
        Verdict::Refused(refusal, response)
    }
}

fn missing_blobs(details: &[Any]) -> Vec<Digest> {
    details
        .iter()
        .filter(|any| type_name(any) == PRECONDITION_FAILURE)
        .filter_map(|any| PreconditionFailure::decode(any.value.as_slice()).ok())
        .flat_map(|failure| failure.violations)
        .filter(|violation| violation.r#type == "MISSING")
        .filter_map(|violation| blob_subject(&violation.subject))
        .collect()
}

/// The digest a MISSING violation's subject names: `blobs/<hash>/<size>` (REAPI), with a
/// digest function's name before the hash where one is given.
pub(crate) fn blob_subject(subject: &str) -> Option<Digest> {
    let rest = subject.strip_prefix("blobs/")?;
    let (front, size) = rest.rsplit_once('/')?;
    let hash = front.rsplit('/').next()?;
    Digest::new(hash, size.parse().ok()?).ok()
}

/// The message type an `Any` holds (the last part of its type URL).
fn type_name(any: &Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn any<M: Message>(name: &str, message: &M) -> Any {
        Any {
            type_url: format!("type.googleapis.com/{name}"),
            value: message.encode_to_vec(),
        }
    }

    pub(crate) fn missing_status(subjects: &[&str]) -> rpc::Status {
        let failure = PreconditionFailure {
            violations: subjects
                .iter()
                .map(|subject| Violation {
                    r#type: "MISSING".into(),
                    subject: subject.to_string(),
                    description: String::new(),
                })
                .collect(),
        };
        rpc::Status {
            code: Code::FailedPrecondition.number(),
            message: "missing blobs".into(),
            details: vec![any(PRECONDITION_FAILURE, &failure)],
        }
    }

    pub(crate) fn done(response: re::ExecuteResponse) -> Operation {
        Operation {
            name: "operations/1".into(),
            done: true,
            result: Some(operation::Result::Response(any(RESPONSE, &response))),
            ..Default::default()
        }
    }

    pub(crate) fn at_stage(stage: re::execution_stage::Value) -> Operation {
        let metadata = re::ExecuteOperationMetadata {
            stage: stage as i32,
            ..Default::default()
        };
        Operation {
            name: "operations/1".into(),
            metadata: Some(any(METADATA, &metadata)),
            ..Default::default()
        }
    }

    #[test]
    fn stages_are_read_from_the_metadata() {
        use re::execution_stage::Value;
        assert_eq!(stage(&at_stage(Value::CacheCheck)), Some(Stage::Queued));
        assert_eq!(stage(&at_stage(Value::Queued)), Some(Stage::Queued));
        assert_eq!(stage(&at_stage(Value::Executing)), Some(Stage::Executing));
        assert_eq!(stage(&at_stage(Value::Completed)), Some(Stage::Completed));
        assert_eq!(stage(&Operation::default()), None);
        let mut other = at_stage(Value::Executing);
        other.metadata.as_mut().unwrap().type_url = "type.googleapis.com/other.Metadata".into();
        assert_eq!(stage(&other), None);
    }

    #[test]
    fn missing_violations_name_blobs() {
        let hash = "ab".repeat(32);
        let status = missing_status(&[
            &format!("blobs/{hash}/12"),
            &format!("blobs/blake3/{hash}/7"),
            "blobs/not-a-digest",
            "something/else",
        ]);
        let refusal = Refusal::of_status(&status);
        assert_eq!(
            refusal.missing,
            [
                Digest::new(&hash, 12).unwrap(),
                Digest::new(&hash, 7).unwrap()
            ]
        );
        let response = re::ExecuteResponse {
            status: Some(status),
            ..Default::default()
        };
        assert_eq!(
            verdict(&done(response)).unwrap(),
            Verdict::Missing(refusal.missing)
        );
    }

    #[test]
    fn a_failed_calls_status_names_the_missing_blobs() {
        let status = missing_status(&[&format!("blobs/{}/3", "cd".repeat(32))]);
        let refusal = Refusal::of_status(&status);
        assert_eq!(refusal.code, Code::FailedPrecondition);
        assert_eq!(refusal.missing.len(), 1);
        let bare = Refusal::of_status(&rpc::Status {
            code: Code::FailedPrecondition.number(),
            message: "no such key".into(),
            details: Vec::new(),
        });
        assert!(matches!(judge(bare, None), Verdict::Refused(r, None) if r.missing.is_empty()));
    }

    #[test]
    fn a_queue_timeout_of_the_server_is_unschedulable() {
        let status = rpc::Status {
            code: Code::Unavailable.number(),
            message: "Operation has been queued for too long".into(),
            details: Vec::new(),
        };
        let operation = Operation {
            done: true,
            result: Some(operation::Result::Error(status.clone())),
            ..Default::default()
        };
        assert_eq!(verdict(&operation).unwrap(), Verdict::Unschedulable);
        let in_response = re::ExecuteResponse {
            status: Some(status),
            ..Default::default()
        };
        assert_eq!(verdict(&done(in_response)).unwrap(), Verdict::Unschedulable);
    }

    #[test]
    fn an_ok_response_ran_whatever_its_exit_code() {
        let response = re::ExecuteResponse {
            result: Some(re::ActionResult {
                exit_code: 3,
                ..Default::default()
            }),
            cached_result: true,
            status: Some(rpc::Status::default()),
            ..Default::default()
        };
        let Verdict::Ran(ran) = verdict(&done(response)).unwrap() else {
            panic!("not Ran");
        };
        assert_eq!(ran.result.unwrap().exit_code, 3);
        assert!(ran.cached_result);
        let mut odd = done(re::ExecuteResponse::default());
        odd.result = Some(operation::Result::Response(any(
            "google.protobuf.Empty",
            &re::ExecuteResponse::default(),
        )));
        assert!(verdict(&odd).is_err());
        odd.result = None;
        assert!(verdict(&odd).is_err());
    }
}
