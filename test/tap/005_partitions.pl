# Partitions through kills and restarts: a 300-parent fan-out (8 requests
# in flight, across parents) and a job of daily date windows, each
# SIGKILLed mid-run (the postmaster restarts the cluster) and stopped at
# once mid-resume, then resumed to the end: every record exactly once, and
# the partitions the run froze at its start are the ones it asks.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Digest::MD5 qw(md5_hex);
use File::Basename qw(dirname);
use Time::HiRes qw(sleep);

$ENV{PYTHON} ||= 'python3';
$ENV{MOCK_API_SCRIPT} ||= 'test/mock_api.py';
my $mock_dir = dirname($ENV{MOCK_API_SCRIPT});

my $mock_port = 19300 + int(rand(500));
my $mock = IPC::Run::start([ $ENV{PYTHON}, $ENV{MOCK_API_SCRIPT}, '--port', $mock_port ],
	'>', \my $mock_out, '2>', \my $mock_err);
for (1 .. 50) { last if $mock_out =~ /listening/; $mock->pump_nb; select(undef, undef, undef, 0.1); }
like($mock_out, qr/listening/, 'mock API started');

my @names = split /\n/, `$ENV{PYTHON} -c "import sys; sys.path.insert(0, '$mock_dir'); import mock_api; [print(mock_api.record(i)['Name'].replace(chr(10), ' ')) for i in range(1, 6001)]"`;
is(scalar(@names), 6000, 'expected names generated');

my $node = PostgreSQL::Test::Cluster->new('partitions');
$node->init;
$node->append_conf('postgresql.conf', "max_worker_processes = 8\nrestart_after_crash = on\n");
$node->start;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION etl_exec;
	CREATE TABLE customers (id int PRIMARY KEY);
	INSERT INTO customers SELECT generate_series(1, 300);
	CREATE TABLE orders (patientid int PRIMARY KEY, name text);
	CREATE TABLE events (patientid int PRIMARY KEY, name text);
	INSERT INTO dw_etl_jobs (job_id, name, url, target_table, page_size, concurrency, checkpoint_interval_seconds,
	                         pagination_options, partitions)
	VALUES (1, 'fan-out', 'http://127.0.0.1:$mock_port/parents/Customers/{customer_id}/Orders?per_parent=20&delay_ms=40',
	        'orders', 10, 8, 0, '{"total_path": "\$.\\"\@odata.count\\""}',
	        '{"query": "SELECT id AS customer_id FROM customers ORDER BY id"}');
	INSERT INTO dw_etl_jobs (job_id, name, url, target_table, page_size, concurrency, checkpoint_interval_seconds,
	                         pagination_options, partitions)
	VALUES (2, 'daily', 'http://127.0.0.1:$mock_port/events/Patients?from={from}&to={to}&delay_ms=150',
	        'events', 10, 2, 0, '{"total_path": "\$.\\"\@odata.count\\""}',
	        '{"dates": {"start": "2024-01-01T00:00:00Z", "end": "2024-01-21T00:00:00Z", "step": "1 day"}}');
});

sub wait_loaded
{
	my ($run_id, $min) = @_;
	$node->poll_query_until('postgres',
		"SELECT records_loaded >= $min AND status = 'running' FROM dw_etl_runs WHERE run_id = $run_id")
	  or die "run $run_id did not get going";
}

sub check_exact
{
	my ($table, $n, $what) = @_;
	is($node->safe_psql('postgres', "SELECT count(*), count(DISTINCT patientid), min(patientid), max(patientid) FROM $table"),
		"$n|$n|1|$n", "$what: every record once");
	is($node->safe_psql('postgres',
			"SELECT md5(string_agg(patientid || '|' || replace(name, E'\\n', ' '), E'\\n' ORDER BY patientid)) FROM $table"),
		md5_hex(join("\n", map { ($_ + 1) . '|' . $names[$_] } 0 .. $n - 1)), "$what: contents match the source");
}

for my $job ([ 1, 'orders', 6000, 1500, 'fan-out' ], [ 2, 'events', 479, 100, 'date windows' ])
{
	my ($job_id, $table, $n, $step, $what) = @$job;
	my $run = $node->safe_psql('postgres', "SELECT etl_execute_job($job_id, timeout := 600)");
	wait_loaded($run, $step);
	sleep 0.5;			# the worker commits asynchronously: let the WAL writer flush
	my $pid = $node->safe_psql('postgres', "SELECT worker_pid FROM dw_etl_runs WHERE run_id = $run");
	kill 'KILL', $pid;
	sleep 1;
	$node->poll_query_until('postgres', 'SELECT true') or die 'server did not come back';
	is($node->safe_psql('postgres', "SELECT etl_wait_run($run, 0)"), 'interrupted', "$what: killed run is interrupted");
	my ($loaded, $rows, $partition) = split /\|/, $node->safe_psql('postgres',
		"SELECT records_loaded, (SELECT count(*) FROM $table), (SELECT partition_index FROM etl_get_checkpoint($run)) "
		  . "FROM dw_etl_runs WHERE run_id = $run");
	cmp_ok($loaded, '>', 0, "$what: records were checkpointed before the kill");
	is($rows, $loaded, "$what: the table holds exactly the checkpointed records");
	cmp_ok($partition, '>', 0, "$what: the checkpoint is past the first partition");

	# the parents change before the resume: the frozen partitions stand
	$node->safe_psql('postgres', 'DELETE FROM customers WHERE id > 150') if $job_id == 1;
	$node->safe_psql('postgres', "SELECT etl_resume_run($run)");
	wait_loaded($run, $loaded + $step);
	sleep 0.5;
	$node->stop('immediate');
	$node->start;
	is($node->safe_psql('postgres', "SELECT etl_wait_run($run, 0)"), 'interrupted', "$what: stopped server's run is interrupted");
	is($node->safe_psql('postgres', 'SELECT etl_resume_pending()'), $run, "$what: etl_resume_pending resumes it");
	is($node->safe_psql('postgres', "SELECT etl_wait_run($run)"), 'succeeded', "$what: the resumed run succeeds");
	check_exact($table, $n, $what);
}

$node->stop;
$mock->kill_kill;
done_testing();
