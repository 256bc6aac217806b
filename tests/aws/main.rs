//! The AWS side against the emulator that `scripts/test.sh` starts: the Lambda application on
//! DynamoDB and S3, the sample events through their functions, the data model as an independent
//! client reads it, the round trips of a warm hit, and music and video jobs through SQS.

mod events;
mod faults;
mod jobs;
mod support;
mod table;
