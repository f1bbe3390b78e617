//! Typed resource pools: cpu slots, memory, and GPUs leased one stage at a time, and the
//! slots of jobs that run elsewhere (on a remote executor), which take none of those.

/// What one job asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    pub cpu: u32,
    pub memory: u64,
    pub gpu: GpuRequest,
    /// The job runs elsewhere: it takes a remote slot and nothing of this machine.
    pub remote: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GpuRequest {
    None,
    /// Any one free GPU.
    Any,
    /// This GPU.
    Id(u32),
}

/// What the machine offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Capacity {
    pub cpu: u32,
    pub memory: u64,
    pub gpus: Vec<u32>,
    /// How many remote jobs may be in flight at once.
    pub remote: u32,
}

/// What a running job holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Lease {
    pub cpu: u32,
    pub memory: u64,
    /// The GPU this job may use, if it asked for one.
    pub gpu: Option<u32>,
    /// A remote slot (and nothing else).
    pub remote: bool,
}

/// The pools while a build runs.
#[derive(Debug)]
pub(crate) struct Pools {
    capacity: Capacity,
    cpu_used: u32,
    memory_used: u64,
    gpus_busy: Vec<u32>,
    remote_used: u32,
}

impl Pools {
    pub(crate) fn new(capacity: Capacity) -> Pools {
        Pools {
            capacity,
            cpu_used: 0,
            memory_used: 0,
            gpus_busy: Vec::new(),
            remote_used: 0,
        }
    }

    /// Why `request` can never be satisfied here, if it cannot.
    pub(crate) fn impossible(&self, request: &Request) -> Option<String> {
        let capacity = &self.capacity;
        if request.remote {
            return (capacity.remote == 0)
                .then(|| "it must run remotely and no remote executor is configured".into());
        }
        if request.memory > capacity.memory {
            return Some(format!(
                "it needs {} of memory but this machine offers {}",
                crate::size::ByteSize(request.memory).display(),
                crate::size::ByteSize(capacity.memory).display()
            ));
        }
        match request.gpu {
            GpuRequest::Any if capacity.gpus.is_empty() => {
                Some("it needs a GPU (device = \"cuda\") but this machine has none".into())
            }
            GpuRequest::Id(id) if !capacity.gpus.contains(&id) => Some(format!(
                "it needs GPU {id} (device = \"cuda:{id}\") but this machine offers {}",
                if capacity.gpus.is_empty() {
                    "no GPU".to_string()
                } else {
                    format!("GPUs {:?}", capacity.gpus)
                }
            )),
            _ => None,
        }
    }

    /// Leases what `request` asks for if it fits now. A cpu request larger than the pool
    /// is clamped to the pool, so such a job runs alone rather than never.
    pub(crate) fn try_lease(&mut self, request: &Request) -> Option<Lease> {
        if request.remote {
            if self.remote_used >= self.capacity.remote {
                return None;
            }
            self.remote_used += 1;
            return Some(Lease {
                remote: true,
                ..Lease::default()
            });
        }
        let cpu = request.cpu.clamp(1, self.capacity.cpu.max(1));
        if self.cpu_used + cpu > self.capacity.cpu.max(1)
            || self.memory_used + request.memory > self.capacity.memory
        {
            return None;
        }
        let gpu = match request.gpu {
            GpuRequest::None => None,
            GpuRequest::Any => Some(
                *self
                    .capacity
                    .gpus
                    .iter()
                    .find(|g| !self.gpus_busy.contains(g))?,
            ),
            GpuRequest::Id(id) if self.gpus_busy.contains(&id) => return None,
            GpuRequest::Id(id) => Some(id),
        };
        self.cpu_used += cpu;
        self.memory_used += request.memory;
        self.gpus_busy.extend(gpu);
        Some(Lease {
            cpu,
            memory: request.memory,
            gpu,
            remote: false,
        })
    }

    /// Whether a slot is free: a cpu slot (every local job needs one) or a remote one.
    pub(crate) fn has_free_slot(&self) -> bool {
        self.cpu_used < self.capacity.cpu.max(1) || self.remote_used < self.capacity.remote
    }

    pub(crate) fn release(&mut self, lease: &Lease) {
        if lease.remote {
            self.remote_used -= 1;
            return;
        }
        self.cpu_used -= lease.cpu;
        self.memory_used -= lease.memory;
        self.gpus_busy.retain(|g| Some(*g) != lease.gpu);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools() -> Pools {
        Pools::new(Capacity {
            cpu: 2,
            memory: 10,
            gpus: vec![0, 1],
            remote: 0,
        })
    }

    #[test]
    fn gpus_are_leased_exclusively() {
        let mut pools = pools();
        let any = Request {
            cpu: 1,
            memory: 0,
            gpu: GpuRequest::Any,
            remote: false,
        };
        let a = pools.try_lease(&any).unwrap();
        let b = pools.try_lease(&any).unwrap();
        assert_ne!(a.gpu, b.gpu);
        assert!(
            pools
                .try_lease(&Request {
                    cpu: 0,
                    memory: 0,
                    gpu: GpuRequest::Id(0),
                    remote: false,
                })
                .is_none()
        );
        pools.release(&a);
        assert_eq!(
            pools
                .try_lease(&Request {
                    cpu: 1,
                    memory: 0,
                    gpu: GpuRequest::Id(0),
                    remote: false,
                })
                .unwrap()
                .gpu,
            Some(0)
        );
    }

    #[test]
    fn memory_and_cpu_limit_concurrency() {
        let mut pools = pools();
        let heavy = Request {
            cpu: 1,
            memory: 6,
            gpu: GpuRequest::None,
            remote: false,
        };
        let lease = pools.try_lease(&heavy).unwrap();
        assert!(
            pools.try_lease(&heavy).is_none(),
            "two 6-unit jobs do not fit in 10"
        );
        pools.release(&lease);
        let wide = Request {
            cpu: 8,
            memory: 0,
            gpu: GpuRequest::None,
            remote: false,
        };
        assert_eq!(
            pools.try_lease(&wide).unwrap().cpu,
            2,
            "clamped to the pool"
        );
    }

    #[test]
    fn impossible_requests_are_named() {
        let pools = Pools::new(Capacity {
            cpu: 2,
            memory: 10,
            gpus: vec![],
            remote: 0,
        });
        assert!(
            pools
                .impossible(&Request {
                    cpu: 1,
                    memory: 0,
                    gpu: GpuRequest::Any,
                    remote: false,
                })
                .unwrap()
                .contains("has none")
        );
        assert!(
            pools
                .impossible(&Request {
                    cpu: 1,
                    memory: 11,
                    gpu: GpuRequest::None,
                    remote: false,
                })
                .unwrap()
                .contains("memory")
        );
        assert!(
            pools
                .impossible(&Request {
                    cpu: 1,
                    memory: 10,
                    gpu: GpuRequest::None,
                    remote: false,
                })
                .is_none()
        );
    }

    #[test]
    fn remote_requests_take_only_remote_slots() {
        let remote = Request {
            cpu: 1,
            memory: 1 << 40,
            gpu: GpuRequest::Any,
            remote: true,
        };
        let mut none = pools();
        assert!(
            none.impossible(&remote)
                .unwrap()
                .contains("no remote executor")
        );
        assert!(none.try_lease(&remote).is_none());
        let mut pools = Pools::new(Capacity {
            cpu: 1,
            memory: 10,
            gpus: vec![],
            remote: 2,
        });
        assert_eq!(
            pools.impossible(&remote),
            None,
            "memory and GPUs are not asked here"
        );
        let first = pools.try_lease(&remote).unwrap();
        assert!(first.remote && first.gpu.is_none() && first.cpu == 0);
        assert!(pools.try_lease(&remote).is_some());
        assert!(pools.try_lease(&remote).is_none(), "two remote slots");
        assert!(pools.has_free_slot(), "the cpu slot is still free");
        pools.release(&first);
        assert!(pools.try_lease(&remote).is_some());
    }
}
