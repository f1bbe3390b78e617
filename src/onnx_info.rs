//! Reads what pochi needs from an ONNX file without Python: the graph inputs' names,
//! element types and declared shapes (`ModelProto.graph.input`, minus initializers).
//! A hand-written decoder of the few protobuf messages involved (field numbers from
//! onnx/onnx.proto); every other field is skipped by its wire type.

use std::path::{Path, PathBuf};

/// Why an ONNX file's inputs could not be read.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum OnnxError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a readable ONNX model", path.display())]
    Malformed {
        path: PathBuf,
        #[source]
        source: DecodeError,
    },
}

/// What is wrong with the bytes of a `ModelProto`.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum DecodeError {
    #[error("the model has no graph")]
    NoGraph,
    #[error("the graph has no inputs")]
    NoInputs,
    #[error("a message field has the wrong wire type")]
    NotAMessage,
    #[error("an integer field has the wrong wire type")]
    NotAnInteger,
    #[error("a name is not UTF-8")]
    NameNotUtf8,
    #[error("truncated varint")]
    TruncatedVarint,
    #[error("varint too long")]
    VarintTooLong,
    #[error("truncated field")]
    TruncatedField,
    #[error("field too long")]
    FieldTooLong,
    #[error("unsupported wire type {0}")]
    UnsupportedWireType(u64),
}

/// One axis of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    /// A named (`dim_param`) or unnamed dynamic axis.
    Dynamic(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Dynamic(name) if name.is_empty() => write!(f, "?"),
            Dim::Dynamic(name) => write!(f, "{name}"),
        }
    }
}

/// A graph input that is fed at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphInput {
    pub name: String,
    /// TensorProto.DataType (1 = float, 10 = float16, 16 = bfloat16, ...); 0 when absent.
    pub elem_type: i32,
    /// `None` when the input declares no shape at all.
    pub shape: Option<Vec<Dim>>,
}

/// Reads the runtime inputs of an ONNX model file.
pub fn read_inputs(path: &Path) -> Result<Vec<GraphInput>, OnnxError> {
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_inputs(&bytes).map_err(|source| OnnxError::Malformed {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses the runtime inputs from the bytes of a `ModelProto`.
pub fn parse_inputs(model: &[u8]) -> Result<Vec<GraphInput>, DecodeError> {
    let mut graph = None;
    for field in Fields::new(model) {
        let (number, value) = field?;
        if number == 7 {
            graph = Some(value.bytes()?);
        }
    }
    let graph = graph.ok_or(DecodeError::NoGraph)?;
    let mut inputs = Vec::new();
    let mut initializers = std::collections::BTreeSet::new();
    for field in Fields::new(graph) {
        match field? {
            (11, value) => inputs.push(value_info(value.bytes()?)?),
            (5, value) => {
                for field in Fields::new(value.bytes()?) {
                    if let (8, name) = field? {
                        initializers.insert(name.string()?);
                    }
                }
            }
            _ => {}
        }
    }
    inputs.retain(|input| !initializers.contains(&input.name));
    if inputs.is_empty() {
        return Err(DecodeError::NoInputs);
    }
    Ok(inputs)
}

fn value_info(bytes: &[u8]) -> Result<GraphInput, DecodeError> {
    let mut input = GraphInput {
        name: String::new(),
        elem_type: 0,
        shape: None,
    };
    for field in Fields::new(bytes) {
        match field? {
            (1, value) => input.name = value.string()?,
            (2, value) => {
                // TypeProto.tensor_type = 1
                for field in Fields::new(value.bytes()?) {
                    if let (1, tensor) = field? {
                        for field in Fields::new(tensor.bytes()?) {
                            match field? {
                                (1, value) => input.elem_type = value.int()? as i32,
                                (2, value) => input.shape = Some(shape(value.bytes()?)?),
                                _ => {}
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(input)
}

fn shape(bytes: &[u8]) -> Result<Vec<Dim>, DecodeError> {
    let mut dims = Vec::new();
    for field in Fields::new(bytes) {
        if let (1, value) = field? {
            let mut dim = Dim::Dynamic(String::new());
            for field in Fields::new(value.bytes()?) {
                match field? {
                    (1, value) => dim = Dim::Fixed(value.int()?),
                    (2, value) => dim = Dim::Dynamic(value.string()?),
                    _ => {}
                }
            }
            // A dim_value of 0 or less is how some exporters write an unknown axis.
            if matches!(dim, Dim::Fixed(n) if n <= 0) {
                dim = Dim::Dynamic(String::new());
            }
            dims.push(dim);
        }
    }
    Ok(dims)
}

/// One decoded field value.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Value<'a> {
    fn bytes(&self) -> Result<&'a [u8], DecodeError> {
        match self {
            Value::Bytes(b) => Ok(b),
            _ => Err(DecodeError::NotAMessage),
        }
    }
    fn string(&self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError::NameNotUtf8)
    }
    fn int(&self) -> Result<i64, DecodeError> {
        match self {
            Value::Varint(v) => Ok(*v as i64),
            _ => Err(DecodeError::NotAnInteger),
        }
    }
}

/// Iterates the fields of one protobuf message.
struct Fields<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Fields {
            rest: bytes,
            failed: false,
        }
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self
                .rest
                .split_first()
                .ok_or(DecodeError::TruncatedVarint)?;
            self.rest = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarintTooLong)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.rest.len() {
            return Err(DecodeError::TruncatedField);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn next_field(&mut self) -> Result<(u64, Value<'a>), DecodeError> {
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| DecodeError::FieldTooLong)?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            other => return Err(DecodeError::UnsupportedWireType(other)),
        };
        Ok((tag >> 3, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Value<'a>), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let field = self.next_field();
        self.failed = field.is_err();
        Some(field)
    }
}

/// Test helpers: encode the same message subset, so tests can make tiny ONNX files.
pub mod encode {
    use super::Dim;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes_field(number: u64, bytes: &[u8], out: &mut Vec<u8>) {
        varint(number << 3 | 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    fn int_field(number: u64, value: i64, out: &mut Vec<u8>) {
        varint(number << 3, out);
        varint(value as u64, out);
    }

    /// A `ModelProto` whose graph has these float inputs (and nothing else that runs).
    pub fn model(inputs: &[(&str, Vec<Dim>)]) -> Vec<u8> {
        let mut graph = Vec::new();
        for (name, dims) in inputs {
            let mut shape = Vec::new();
            for dim in dims {
                let mut d = Vec::new();
                match dim {
                    Dim::Fixed(n) => int_field(1, *n, &mut d),
                    Dim::Dynamic(name) => bytes_field(2, name.as_bytes(), &mut d),
                }
                bytes_field(1, &d, &mut shape);
            }
            let mut tensor = Vec::new();
            int_field(1, 1, &mut tensor);
            bytes_field(2, &shape, &mut tensor);
            let mut type_proto = Vec::new();
            bytes_field(1, &tensor, &mut type_proto);
            let mut info = Vec::new();
            bytes_field(1, name.as_bytes(), &mut info);
            bytes_field(2, &type_proto, &mut info);
            bytes_field(11, &info, &mut graph);
        }
        let mut model = Vec::new();
        int_field(1, 8, &mut model); // ir_version
        bytes_field(7, &graph, &mut model);
        model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_declared_shapes() {
        let bytes = encode::model(&[(
            "input",
            vec![
                Dim::Dynamic("batch".into()),
                Dim::Fixed(3),
                Dim::Fixed(224),
                Dim::Fixed(224),
            ],
        )]);
        let inputs = parse_inputs(&bytes).unwrap();
        assert_eq!(inputs.len(), 1);
        assert_eq!(inputs[0].name, "input");
        assert_eq!(inputs[0].elem_type, 1);
        assert_eq!(
            inputs[0].shape.as_ref().unwrap()[0],
            Dim::Dynamic("batch".into())
        );
        assert_eq!(inputs[0].shape.as_ref().unwrap()[3], Dim::Fixed(224));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_inputs(b"\xff\xff\xff").is_err());
        assert!(parse_inputs(b"").is_err());
    }
}
