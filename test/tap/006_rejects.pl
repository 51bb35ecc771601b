# Rejected records through a timeout and a SIGKILL: a job with
# on_bad_record = 'reject' over the mock's 20,000 records with seven bad
# ones (bad_records=1) times out, is resumed and SIGKILLed mid-run, and
# resumed to its end: 19,993 rows and 7 rejects, each exactly once; after
# every stop the table, records_loaded, run_context.rejected and
# dw_etl_rejects agree with the checkpoint.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(sleep);

$ENV{PYTHON} ||= 'python3';
$ENV{MOCK_API_SCRIPT} ||= 'test/mock_api.py';

my $n = 20000;
my $bad = '7,150,2500,5001,9999,14000,19876';	# mock_api.BAD_RECORDS
my $mock_port = 18700 + int(rand(500));
my $mock = IPC::Run::start([ $ENV{PYTHON}, $ENV{MOCK_API_SCRIPT}, '--port', $mock_port ],
	'>', \my $mock_out, '2>', \my $mock_err);
for (1 .. 50) { last if $mock_out =~ /listening/; $mock->pump_nb; select(undef, undef, undef, 0.1); }
like($mock_out, qr/listening/, 'mock API started');

my $node = PostgreSQL::Test::Cluster->new('rejects');
$node->init;
$node->append_conf('postgresql.conf', "restart_after_crash = on\n");
$node->start;
# 100 pages of 200 records at 100 ms each: ~10 s a run
$node->safe_psql('postgres', qq{
	CREATE EXTENSION etl_exec;
	CREATE TABLE p_rejects (patientid int PRIMARY KEY, name varchar(200), birthdate date,
	                        score numeric(10,2) CHECK (score >= 0), visits int);
	INSERT INTO dw_etl_jobs (job_id, name, url, target_table, page_size, checkpoint_interval_seconds,
	                         on_bad_record, pagination_options)
	VALUES (1, 'rejects', 'http://127.0.0.1:$mock_port/odata/Patients?n=$n&delay_ms=100&bad_records=1',
	        'p_rejects', 200, 0, 'reject', '{"total_path": "\$.\\"\@odata.count\\""}');
});

# after a stop: the checkpoint's records are the table's rows and the rejects, once each
sub agrees_with_checkpoint
{
	my ($run_id, $what) = @_;
	my ($skip, $loaded, $rejected, $rows, $rejects, $distinct, $expected) = split /\|/, $node->safe_psql('postgres', qq{
		SELECT c.skip, r.records_loaded, coalesce(r.run_context ->> 'rejected', '0'),
		       (SELECT count(*) FROM p_rejects),
		       (SELECT count(*) FROM dw_etl_rejects WHERE run_id = $run_id),
		       (SELECT count(DISTINCT (page_index, record_index)) FROM dw_etl_rejects WHERE run_id = $run_id),
		       (SELECT count(*) FROM unnest('{$bad}'::int[]) b WHERE b <= c.skip)
		FROM dw_etl_runs r, etl_get_checkpoint($run_id) c WHERE r.run_id = $run_id});
	cmp_ok($skip, '>', 0, "$what: records were checkpointed before it");
	is($rejects, $expected, "$what: the bad records before the checkpoint are rejected");
	is($distinct, $rejects, "$what: each once");
	is($rejected, $rejects, "$what: run_context.rejected counts them");
	is($loaded, $skip - $rejects, "$what: records_loaded counts the others");
	is($rows, $loaded, "$what: the table holds exactly those");
}

# a timeout mid-run
my $run = $node->safe_psql('postgres', 'SELECT etl_execute_job(1, timeout := 2)');
is($node->safe_psql('postgres', "SELECT etl_wait_run($run)"), 'timed_out', 'the run times out');
agrees_with_checkpoint($run, 'timeout');

# a SIGKILL in the middle of the resume
my $before = $node->safe_psql('postgres', "SELECT records_loaded FROM dw_etl_runs WHERE run_id = $run");
$node->safe_psql('postgres', "SELECT etl_resume_run($run, timeout := 600)");
$node->poll_query_until('postgres',
	"SELECT records_loaded >= $before + 3000 AND status = 'running' FROM dw_etl_runs WHERE run_id = $run")
  or die 'the resume did not get going';
my $pid = $node->safe_psql('postgres', "SELECT worker_pid FROM dw_etl_runs WHERE run_id = $run");
# the worker commits asynchronously: let the WAL writer put its commits on disk
sleep 0.5;
kill 'KILL', $pid;
sleep 1;
$node->poll_query_until('postgres', 'SELECT true') or die 'server did not come back';
is($node->safe_psql('postgres', "SELECT etl_wait_run($run, 0)"), 'interrupted', 'the killed run is interrupted');
agrees_with_checkpoint($run, 'SIGKILL');

# resumed to its end
$node->safe_psql('postgres', "SELECT etl_resume_run($run, timeout := 600)");
is($node->safe_psql('postgres', "SELECT etl_wait_run($run)"), 'succeeded', 'the resumed run succeeds');
is($node->safe_psql('postgres',
		"SELECT records_loaded || '|' || (run_context ->> 'rejected') FROM dw_etl_runs WHERE run_id = $run"),
	'19993|7', '19,993 records loaded, 7 rejected');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT patientid) FROM p_rejects'),
	'19993|19993', 'every good record once');
is($node->safe_psql('postgres',
		"SELECT string_agg(i::text, ',' ORDER BY i) FROM generate_series(1, $n) i "
		  . 'WHERE i NOT IN (SELECT patientid FROM p_rejects)'),
	$bad, 'the bad records, and only they, are missing');
is($node->safe_psql('postgres',
		"SELECT string_agg((page_index * 200 + record_index + 1)::text, ',' ORDER BY page_index, record_index), "
		  . "count(DISTINCT (page_index, record_index)) FROM dw_etl_rejects WHERE run_id = $run"),
	"$bad|7", 'each bad record is rejected exactly once');

$node->stop;
$mock->kill_kill;
done_testing();
